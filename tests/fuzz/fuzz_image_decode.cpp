// libFuzzer target: any byte string given to the image decoders (JPEG, PNG, WebP, BMP, EXIF) either
// decodes into an image whose invariants hold or raises fluxtrain::Error; never a crash, leak, hang or
// undefined behaviour. The pixel limit is small so that a header claiming a huge size costs nothing.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "core/error.h"
#include "data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fluxtrain::data;
  constexpr std::uint64_t kMaxPixels = 1 << 20;
  std::span<const std::uint8_t> bytes(data, size);
  try {
    ImageInfo info = probe_image_bytes(bytes, "fuzz", kMaxPixels);
    for (bool keep_alpha : {false, true}) {
      Image image = decode_image_bytes(bytes, "fuzz", keep_alpha, kMaxPixels);
      // The probe and the decode agree on the size, and the pixel buffer is exactly the image.
      if (image.width != info.width || image.height != info.height || image.channels != (keep_alpha ? 4 : 3) ||
          image.pixels.size() != std::size_t(image.width) * image.height * image.channels)
        std::abort();
    }
  } catch (const fluxtrain::Error&) {
  }
  return 0;
}
