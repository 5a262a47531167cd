// Image files for the dataset and the samples (torch-free): decoding JPEG, PNG, WebP and BMP into
// 8-bit RGB or RGBA with EXIF orientation applied, resizing, cropping and writing PNG with text chunks.
//
// Every failure throws fluxtrain::Error naming the file and what is wrong with it (truncated, corrupt,
// unsupported format, empty file), so that the dataset scan can warn, skip and count it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain::data {

// Decoding refuses images of more pixels than this (16384 x 16384): a hostile or broken header must not
// make the trainer allocate gigabytes.
inline constexpr std::uint64_t kMaxImagePixels = std::uint64_t{1} << 28;

// Image files over this many bytes (512 MiB) are refused before a byte is read, by the probe of the
// dataset scan (which skips and counts them) and by every load: no dataset image is near it (a 16384 x
// 16384 PNG of photographic content is ~500 MB; an uncompressed BMP that large should be converted).
inline constexpr std::uint64_t kMaxImageFileBytes = std::uint64_t{512} << 20;

// What a file holds, read from its header only (no pixel decode). width/height are after EXIF
// orientation (a portrait photo stored landscape with orientation 6 reports its portrait size).
struct ImageInfo {
  int width = 0;
  int height = 0;
  bool has_alpha = false;
  std::string format;  // "jpeg", "png", "webp", "bmp"
};
ImageInfo probe_image(const std::filesystem::path& path);

// Interleaved 8-bit pixels, row-major, channels 3 (RGB) or 4 (RGBA, straight alpha).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<std::uint8_t> pixels;  // width * height * channels
};

// Decodes to RGB (keep_alpha = false: alpha is composited onto white; grayscale, palette, 16-bit and
// CMYK are converted) or to RGBA (keep_alpha = true: the alpha channel is kept, 255 where the file has
// none), with EXIF orientation applied.
Image load_image(const std::filesystem::path& path, bool keep_alpha = false);

// probe_image and load_image on bytes in memory; `name` names them in errors. A smaller max_pixels
// bounds the work on untrusted input (the fuzzer uses one).
ImageInfo probe_image_bytes(std::span<const std::uint8_t> bytes, const std::string& name,
                            std::uint64_t max_pixels = kMaxImagePixels);
Image decode_image_bytes(std::span<const std::uint8_t> bytes, const std::string& name, bool keep_alpha = false,
                         std::uint64_t max_pixels = kMaxImagePixels);

// Resizes to exactly width x height: an area filter (exact fractional coverage, as OpenCV's INTER_AREA)
// when shrinking, Lanczos-3 (as PIL's LANCZOS) when growing, chosen per axis. Computed in float on
// premultiplied alpha for RGBA, rounded to nearest.
Image resize_image(const Image& image, int width, int height);

// The rectangle [left, left + width) x [top, top + height); must lie inside the image.
Image crop_image(const Image& image, int left, int top, int width, int height);

// Mirrors left-right.
Image flip_horizontal(const Image& image);

// Writes a PNG (RGB or RGBA) atomically, with tEXt/iTXt chunks (key, value) such as the prompt, seed
// and step of a sample.
void save_png(const std::filesystem::path& path, const Image& image,
              const std::vector<std::pair<std::string, std::string>>& text = {});

// Reads a PNG's text chunks back (tests, `inspect`).
std::vector<std::pair<std::string, std::string>> read_png_text(const std::filesystem::path& path);

}  // namespace fluxtrain::data
