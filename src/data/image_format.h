// Internal to src/data/image*.cpp: format detection, header walks and the per-format pixel decoders.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "data/image.h"

namespace fluxtrain::data::detail {

enum class Format { jpeg, png, webp, bmp };
const char* format_name(Format format);

// Random access to the bytes of a file or of a memory buffer, so that a header walk reads only the
// few bytes it needs (a dataset scan probes thousands of files).
class ByteSource {
 public:
  explicit ByteSource(std::span<const std::uint8_t> memory) : memory_(memory), size_(memory.size()) {}
  ByteSource(const std::filesystem::path& path, const std::string& name);
  std::uint64_t size() const { return size_; }
  // Up to n bytes from offset: fewer at the end of the data, none past it. Valid until the next call.
  std::span<const std::uint8_t> read(std::uint64_t offset, std::size_t n);

 private:
  std::span<const std::uint8_t> memory_;
  std::ifstream file_;
  bool is_file_ = false;
  std::vector<std::uint8_t> buffer_;
  std::uint64_t size_ = 0;
};

// What the header walk finds: the stored size (before orientation) and the EXIF orientation 1..8.
struct Header {
  Format format = Format::png;
  int width = 0;
  int height = 0;
  bool has_alpha = false;
  int orientation = 1;
};

// Detects the format by its magic bytes and walks the headers; throws Error naming `name` for empty,
// unknown, corrupt or oversized (> max_pixels) files.
Header read_header(ByteSource& source, const std::string& name, std::uint64_t max_pixels);

// The Orientation tag (0x0112) of IFD0 of a TIFF/EXIF block (an "Exif\0\0" prefix is skipped); 1 when
// absent, out of range or malformed (a broken EXIF block never fails the image).
int exif_orientation(std::span<const std::uint8_t> exif);

// Pixel decoders: 8-bit RGB, or RGBA when the file has alpha. They check width * height against
// max_pixels before allocating; errors name `name`.
Image decode_jpeg(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels);
Image decode_png(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels);
Image decode_webp(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels);
Image decode_bmp(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels);

// BMP header fields shared by the header walk and the decoder.
struct BmpLayout {
  int width = 0;
  int height = 0;
  bool top_down = false;
  int bits = 0;
  std::uint32_t pixel_offset = 0;
  std::uint32_t masks[4] = {0, 0, 0, 0};  // r, g, b, a for 16/32-bit
  std::vector<std::uint8_t> palette;      // rgb triples for 1/4/8-bit
};
BmpLayout parse_bmp_layout(ByteSource& source, const std::string& name);

// An image of the given size with zeroed pixels.
inline Image blank_image(int width, int height, int channels) {
  return Image{width, height, channels, std::vector<std::uint8_t>(std::size_t(width) * height * channels)};
}

// Throws unless 0 < width, height and width * height <= max_pixels.
void check_size(const std::string& name, const char* format, long long width, long long height,
                std::uint64_t max_pixels);

}  // namespace fluxtrain::data::detail
