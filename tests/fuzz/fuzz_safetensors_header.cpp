// libFuzzer target: any byte string given to the safetensors parser either parses into a header whose
// invariants hold or raises fluxtrain::Error; never a crash, leak, hang or undefined behaviour.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "core/safetensors_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fluxtrain::safetensors;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    Header header = parse_buffer(bytes, "fuzz.safetensors");
    uint64_t expected = 0;
    for (const TensorInfo& t : header.tensors) {
      if (t.begin != expected || t.nbytes() != t.numel() * dtype_size(t.dtype)) std::abort();
      expected = t.end;
    }
    if (header.file_size() != size) std::abort();
    // What we write for this layout must parse back to the same layout.
    std::string again = serialize_header(header.tensors, header.metadata);
    again.resize(again.size() + header.data_size);
    Header round = parse_buffer(again, "roundtrip.safetensors");
    if (round.tensors.size() != header.tensors.size() || round.metadata != header.metadata) std::abort();
  } catch (const fluxtrain::Error&) {
  }
  return 0;
}
