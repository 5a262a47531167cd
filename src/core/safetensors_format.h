// The safetensors container format, without torch: dtypes, the JSON header, its validation and its
// serialisation. The torch-facing reader/writer (core/safetensors.h) is built on this; the header
// parser is also built alone for the sanitizer and fuzz tests.
//
// Layout: u64 little-endian N, then N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]},
// "__metadata__": {str: str}}, then the data area; offsets are relative to byte 8 + N.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fluxtrain::safetensors {

enum class Dtype : uint8_t { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL };

inline constexpr Dtype kAllDtypes[] = {Dtype::F64,     Dtype::F32,     Dtype::F16, Dtype::BF16,
                                       Dtype::F8_E4M3, Dtype::F8_E5M2, Dtype::I64, Dtype::I32,
                                       Dtype::I16,     Dtype::I8,      Dtype::U8,  Dtype::BOOL};

std::string_view dtype_name(Dtype dtype);
size_t dtype_size(Dtype dtype);
std::optional<Dtype> parse_dtype(std::string_view name);

using Metadata = std::map<std::string, std::string>;

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // relative to the data area
  uint64_t end = 0;
  uint64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// Python's safetensors refuses headers over 100 MB; so do we (a longer "header" is a wrong file).
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct Header {
  std::vector<TensorInfo> tensors;  // in data order (ascending offsets)
  Metadata metadata;
  uint64_t header_size = 0;  // N, the JSON length
  uint64_t data_size = 0;    // bytes of tensor data the header describes
  uint64_t data_start() const { return 8 + header_size; }
  uint64_t file_size() const { return data_start() + data_size; }
  const TensorInfo* find(std::string_view name) const;
  uint64_t parameter_count() const;

  std::unordered_map<std::string, size_t> index;  // name -> position in `tensors`
};

// Validates the 8-byte length prefix against the file size; returns N. `file` names the file in
// messages.
uint64_t parse_header_length(const unsigned char prefix[8], uint64_t file_size, const std::string& file);

// Parses and validates the JSON header (N = json.size()) of a file of `file_size` bytes. Every
// inconsistency is an Error naming the file and the tensor.
Header parse_header(std::string_view json, uint64_t file_size, const std::string& file);

// Parses a whole in-memory file (header and data area); used by the fuzzer and tests.
Header parse_buffer(std::string_view bytes, const std::string& file);

// Reads and validates only the header of a file on disk (a 23 GB file answers in milliseconds).
Header read_header(const std::string& path);

// The JSON header for tensors laid out in the given order (offsets must be contiguous from 0),
// space-padded so the data area starts 8-byte aligned. Returns the 8-byte prefix + JSON.
std::string serialize_header(const std::vector<TensorInfo>& tensors, const Metadata& metadata);

// Lays out tensors for writing: sorted by element size (largest first) then name, so every tensor
// starts aligned to its own element size; fills begin/end. Duplicate names are an Error.
void assign_offsets(std::vector<TensorInfo>& tensors, const std::string& file);

// Reads one small tensor's value (a LoRA alpha, say) from a file on disk as a double. Float and
// integer dtypes with one element only.
double read_scalar(const std::string& path, const Header& header, const TensorInfo& info);

// Converts IEEE half / bfloat16 / fp8 bit patterns to float (for tools that read without torch).
float half_to_float(uint16_t bits);
float bfloat16_to_float(uint16_t bits);
float fp8_e4m3_to_float(uint8_t bits);
float fp8_e5m2_to_float(uint8_t bits);

}  // namespace fluxtrain::safetensors
