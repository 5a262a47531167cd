// Image entry points, format detection, header walks (sizes, alpha, EXIF orientation) and the pixel
// operations that need no codec. The codecs are in image_codecs.cpp, the resampling in image_resize.cpp.
#include "data/image.h"

#include <webp/decode.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "data/image_format.h"

namespace fluxtrain::data {
namespace detail {
namespace {

using namespace std::literals;

// IFD0 sits at the start of an EXIF block; a bigger block is thumbnails and maker notes.
constexpr std::uint32_t kMaxExifBytes = 1 << 20;

std::uint32_t be16(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 8) | p[1];
}
std::uint32_t be32(const std::uint8_t* p) {
  return (be16(p) << 16) | be16(p + 2);
}
std::uint32_t le16(const std::uint8_t* p) {
  return (std::uint32_t{p[1]} << 8) | p[0];
}
std::uint32_t le32(const std::uint8_t* p) {
  return (le16(p + 2) << 16) | le16(p);
}

bool starts_with(std::span<const std::uint8_t> bytes, std::string_view magic, std::size_t at = 0) {
  return bytes.size() >= at + magic.size() && std::memcmp(bytes.data() + at, magic.data(), magic.size()) == 0;
}

// Formats we recognise but do not decode, so the error can say what the file is.
const char* unsupported_format(std::span<const std::uint8_t> head) {
  if (starts_with(head, "GIF87a") || starts_with(head, "GIF89a")) return "GIF";
  if (starts_with(head, "II*\0"sv) || starts_with(head, "MM\0*"sv)) return "TIFF";
  if (starts_with(head, "ftypavif", 4) || starts_with(head, "ftypavis", 4)) return "AVIF";
  if (starts_with(head, "ftyphei", 4) || starts_with(head, "ftypmif1", 4) || starts_with(head, "ftyphev", 4))
    return "HEIF/HEIC";
  if (starts_with(head, "\xff\x0a") || starts_with(head, "\0\0\0\x0cJXL "sv)) return "JPEG XL";
  if (starts_with(head, "8BPS")) return "Photoshop PSD";
  if (starts_with(head, "\0\0\0\x0cjP  "sv)) return "JPEG 2000";
  if (starts_with(head, "%PDF")) return "PDF";
  return nullptr;
}

void need(std::span<const std::uint8_t> got, std::size_t n, const std::string& name, const char* format,
          const char* what) {
  if (got.size() < n)
    fail(name, ": truncated ", format, " file: it ends inside the ", what, "; re-download or re-export it");
}

bool is_jpeg_sof(int marker) {
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

// Walks the marker segments up to the first scan: the frame header (size, components) and the first
// APP1 "Exif" segment (the one PIL reads).
Header jpeg_header(ByteSource& source, const std::string& name) {
  Header header{Format::jpeg};
  bool have_frame = false, have_exif = false;
  std::uint64_t pos = 2;
  while (true) {
    auto head = source.read(pos, 4);
    need(head, 2, name, "JPEG", "marker segments before the image data");
    if (head[0] != 0xFF)
      fail(name, ": corrupt JPEG: expected a marker at byte ", pos, ", found 0x", std::hex, int{head[0]});
    int marker = head[1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {  // markers without a length
      pos += 2;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) break;  // start of scan / end of image
    need(head, 4, name, "JPEG", "marker segments before the image data");
    std::uint32_t length = be16(head.data() + 2);
    if (length < 2) fail(name, ": corrupt JPEG: marker segment 0x", std::hex, marker, " has length ", std::dec, length);
    if (is_jpeg_sof(marker) && !have_frame) {
      auto frame = source.read(pos + 4, 6);
      need(frame, 6, name, "JPEG", "frame header");
      header.height = static_cast<int>(be16(frame.data() + 1));
      header.width = static_cast<int>(be16(frame.data() + 3));
      int components = frame[5];
      if (components != 1 && components != 3 && components != 4)
        fail(name, ": JPEG with ", components, " colour components is not supported (expected 1, 3 or 4)");
      have_frame = true;
    } else if (marker == 0xE1 && !have_exif && length >= 8) {
      auto segment = source.read(pos + 4, length - 2);
      if (starts_with(segment, "Exif\0\0"sv)) {
        header.orientation = exif_orientation(segment);
        have_exif = true;
      }
    }
    pos += 2 + length;
  }
  if (!have_frame) fail(name, ": corrupt JPEG: no frame header (SOF marker) before the image data");
  return header;
}

// Walks the chunks: IHDR, tRNS (alpha) and eXIf, which PIL honours before or after the image data.
Header png_header(ByteSource& source, const std::string& name) {
  Header header{Format::png};
  auto ihdr = source.read(8, 25);
  need(ihdr, 25, name, "PNG", "IHDR chunk");
  if (be32(ihdr.data()) != 13 || !starts_with(ihdr, "IHDR", 4))
    fail(name, ": corrupt PNG: the first chunk is not IHDR");
  std::uint32_t width = be32(ihdr.data() + 8), height = be32(ihdr.data() + 12);
  if (width > 0x7fffffff || height > 0x7fffffff) fail(name, ": corrupt PNG: size ", width, "x", height);
  header.width = static_cast<int>(width);
  header.height = static_cast<int>(height);
  int color_type = ihdr[17];
  header.has_alpha = color_type == 4 || color_type == 6;
  bool seen_idat = false;
  for (std::uint64_t pos = 33;;) {
    auto chunk = source.read(pos, 8);
    std::uint32_t length = chunk.size() == 8 ? be32(chunk.data()) : 0;
    bool fits = chunk.size() == 8 && length <= 0x7fffffff && pos + 12 + length <= source.size();
    if (!fits) {
      // Past the image data, a missing IEND or trailing junk is tolerated (PIL loads such files too).
      if (seen_idat) break;
      fail(name, ": truncated PNG file: the chunk at byte ", pos, " runs past the end (", source.size(),
           " bytes); re-download or re-export it");
    }
    std::string_view type(reinterpret_cast<const char*>(chunk.data() + 4), 4);
    if (type == "IEND") break;
    if (type == "IDAT") seen_idat = true;
    if (type == "tRNS") header.has_alpha = true;
    if (type == "eXIf" && header.orientation == 1)
      header.orientation = exif_orientation(source.read(pos + 8, std::min<std::uint32_t>(length, kMaxExifBytes)));
    pos += 12 + length;
  }
  if (!seen_idat) fail(name, ": corrupt PNG: no image data (IDAT chunk)");
  return header;
}

// A simple WebP (one VP8 or VP8L chunk) is read by libwebp from its first bytes; an extended one (VP8X)
// has the canvas size and flags in its first chunk, and an EXIF chunk found by walking the RIFF chunks.
Header webp_header(ByteSource& source, const std::string& name) {
  Header header{Format::webp};
  auto head = source.read(0, 64);
  need(head, 20, name, "WebP", "header");
  if (!starts_with(head, "VP8X", 12)) {
    WebPBitstreamFeatures features;
    VP8StatusCode status = WebPGetFeatures(head.data(), head.size(), &features);
    if (status == VP8_STATUS_NOT_ENOUGH_DATA) need(head, head.size() + 1, name, "WebP", "header");
    if (status != VP8_STATUS_OK) fail(name, ": corrupt WebP header (libwebp status ", int{status}, ")");
    header.width = features.width;
    header.height = features.height;
    header.has_alpha = features.has_alpha != 0;
    return header;
  }
  need(head, 30, name, "WebP", "header");
  int flags = head[20];
  if (flags & 0x02) fail(name, ": animated WebP is not supported; export a still image");
  header.width = 1 + static_cast<int>(le16(head.data() + 24) | (std::uint32_t{head[26]} << 16));
  header.height = 1 + static_cast<int>(le16(head.data() + 27) | (std::uint32_t{head[29]} << 16));
  header.has_alpha = (flags & 0x10) != 0;
  if (flags & 0x08) {
    std::uint64_t riff_end = std::min<std::uint64_t>(source.size(), 8 + std::uint64_t{le32(head.data() + 4)});
    for (std::uint64_t pos = 12; pos + 8 <= riff_end;) {
      auto chunk = source.read(pos, 8);
      std::uint64_t length = le32(chunk.data() + 4);
      if (starts_with(chunk, "EXIF")) {
        header.orientation = exif_orientation(source.read(pos + 8, std::min<std::uint64_t>(length, kMaxExifBytes)));
        break;
      }
      pos += 8 + length + (length & 1);
    }
  }
  return header;
}

Header bmp_header(ByteSource& source, const std::string& name) {
  BmpLayout layout = parse_bmp_layout(source, name);
  Header header{Format::bmp, layout.width, layout.height};
  header.has_alpha = (layout.bits == 32 || layout.bits == 16) && layout.masks[3] != 0;
  return header;
}

// (x, y) of the stored image that lands at (x, y) of the oriented one, for EXIF orientations 1..8
// (as PIL.ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
// 7 transverse, 8 rotate 90 counter-clockwise).
Image apply_orientation(Image in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  bool swap = orientation >= 5;
  Image out = blank_image(swap ? in.height : in.width, swap ? in.width : in.height, in.channels);
  const int w = in.width, h = in.height, c = in.channels;
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x, sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y, sy = x; break;
        case 6: sx = y, sy = h - 1 - x; break;
        case 7: sx = w - 1 - y, sy = h - 1 - x; break;
        case 8: sx = w - 1 - y, sy = x; break;
      }
      std::memcpy(&out.pixels[(std::size_t(y) * out.width + x) * c], &in.pixels[(std::size_t(sy) * w + sx) * c], c);
    }
  }
  return out;
}

// RGBA -> RGB composites onto white: round((c * a + 255 * (255 - a)) / 255). RGB -> RGBA adds alpha 255.
Image convert_channels(Image in, int channels) {
  if (in.channels == channels) return in;
  Image out = blank_image(in.width, in.height, channels);
  std::size_t n = std::size_t(in.width) * in.height;
  const std::uint8_t* s = in.pixels.data();
  std::uint8_t* d = out.pixels.data();
  if (channels == 4) {
    for (std::size_t i = 0; i < n; ++i, s += 3, d += 4) d[0] = s[0], d[1] = s[1], d[2] = s[2], d[3] = 255;
  } else {
    for (std::size_t i = 0; i < n; ++i, s += 4, d += 3) {
      unsigned a = s[3];
      for (int k = 0; k < 3; ++k) d[k] = static_cast<std::uint8_t>((s[k] * a + 255 * (255 - a) + 127) / 255);
    }
  }
  return out;
}

}  // namespace

const char* format_name(Format format) {
  switch (format) {
    case Format::jpeg: return "jpeg";
    case Format::png: return "png";
    case Format::webp: return "webp";
    case Format::bmp: return "bmp";
  }
  return "?";
}

ByteSource::ByteSource(const std::filesystem::path& path, const std::string& name) : is_file_(true) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(name, ": is a folder, not an image file");
  size_ = std::filesystem::file_size(path, ec);
  if (ec) fail(name, ": cannot read the image file: ", ec.message());
  if (size_ > kMaxImageFileBytes)
    fail(name, ": the image file is ", format_bytes(double(size_)), ", over the ", kMaxImageFileBytes >> 20,
         " MiB limit for an image file (is it an image?); convert it to a compressed format or downscale it");
  file_.open(path, std::ios::binary);
  if (!file_) fail(name, ": cannot open the image file: ", std::strerror(errno));
}

std::span<const std::uint8_t> ByteSource::read(std::uint64_t offset, std::size_t n) {
  if (offset >= size_) return {};
  n = static_cast<std::size_t>(std::min<std::uint64_t>(n, size_ - offset));
  if (!is_file_) return memory_.subspan(offset, n);
  buffer_.resize(n);
  file_.clear();
  file_.seekg(static_cast<std::streamoff>(offset));
  file_.read(reinterpret_cast<char*>(buffer_.data()), static_cast<std::streamsize>(n));
  buffer_.resize(static_cast<std::size_t>(std::max<std::streamsize>(file_.gcount(), 0)));
  return buffer_;
}

void check_size(const std::string& name, const char* format, long long width, long long height,
                std::uint64_t max_pixels) {
  if (width <= 0 || height <= 0) fail(name, ": corrupt ", format, ": the header gives the size ", width, "x", height);
  if (static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height) > max_pixels)
    fail(name, ": ", format, " image of ", width, "x", height, " = ", format_count(width * height),
         " pixels is larger than the limit of ", format_count(static_cast<long long>(max_pixels)),
         " pixels; downscale it first");
}

int exif_orientation(std::span<const std::uint8_t> exif) {
  if (starts_with(exif, "Exif\0\0"sv)) exif = exif.subspan(6);
  if (exif.size() < 8) return 1;
  bool little = starts_with(exif, "II");
  if (!little && !starts_with(exif, "MM")) return 1;
  auto u16 = [&](std::size_t at) { return little ? le16(&exif[at]) : be16(&exif[at]); };
  auto u32 = [&](std::size_t at) { return little ? le32(&exif[at]) : be32(&exif[at]); };
  if (u16(2) != 42) return 1;
  std::uint64_t ifd = u32(4);
  if (ifd + 2 > exif.size()) return 1;
  std::uint32_t count = u16(ifd);
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint64_t entry = ifd + 2 + 12 * std::uint64_t{i};
    if (entry + 12 > exif.size()) return 1;
    if (u16(entry) != 0x0112) continue;
    std::uint32_t type = u16(entry + 2), n = u32(entry + 4);
    if (n < 1) return 1;
    std::uint32_t value = type == 3 ? u16(entry + 8) : type == 4 ? u32(entry + 8) : 0;  // SHORT or LONG
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

Header read_header(ByteSource& source, const std::string& name, std::uint64_t max_pixels) {
  if (source.size() == 0) fail(name, ": the image file is empty (0 bytes)");
  auto head = source.read(0, 16);
  Header header;
  if (starts_with(head, "\xff\xd8\xff")) {
    header = jpeg_header(source, name);
  } else if (starts_with(head, "\x89PNG\r\n\x1a\n")) {
    header = png_header(source, name);
  } else if (starts_with(head, "RIFF") && starts_with(head, "WEBP", 8)) {
    header = webp_header(source, name);
  } else if (starts_with(head, "BM")) {
    header = bmp_header(source, name);
  } else if (const char* other = unsupported_format(head)) {
    fail(name, ": ", other, " images are not supported; convert it to PNG or JPEG");
  } else {
    std::string magic;
    for (std::size_t i = 0; i < std::min<std::size_t>(head.size(), 8); ++i)
      magic += cat(i ? " " : "", std::hex, int{head[i]});
    fail(name, ": not an image file this program reads (expected JPEG, PNG, WebP or BMP by content; it starts with ",
         magic, ")");
  }
  check_size(name, format_name(header.format), header.width, header.height, max_pixels);
  return header;
}

}  // namespace detail

using namespace detail;

namespace {
// The size as displayed: orientations 5 to 8 swap width and height.
ImageInfo info_of(const Header& header) {
  bool swap = header.orientation >= 5;
  return {swap ? header.height : header.width, swap ? header.width : header.height, header.has_alpha,
          format_name(header.format)};
}
}  // namespace

ImageInfo probe_image_bytes(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  ByteSource source(bytes);
  return info_of(read_header(source, name, max_pixels));
}

ImageInfo probe_image(const std::filesystem::path& path) {
  std::string name = path.string();
  ByteSource source(path, name);
  return info_of(read_header(source, name, kMaxImagePixels));
}

Image decode_image_bytes(std::span<const std::uint8_t> bytes, const std::string& name, bool keep_alpha,
                         std::uint64_t max_pixels) {
  ByteSource source(bytes);
  Header header = read_header(source, name, max_pixels);
  Image image;
  switch (header.format) {
    case Format::jpeg: image = decode_jpeg(bytes, name, max_pixels); break;
    case Format::png: image = decode_png(bytes, name, max_pixels); break;
    case Format::webp: image = decode_webp(bytes, name, max_pixels); break;
    case Format::bmp: image = decode_bmp(bytes, name, max_pixels); break;
  }
  if (image.width != header.width || image.height != header.height)
    fail(name, ": corrupt ", format_name(header.format), ": the header gives ", header.width, "x", header.height,
         " but the image data is ", image.width, "x", image.height);
  return apply_orientation(convert_channels(std::move(image), keep_alpha ? 4 : 3), header.orientation);
}

Image load_image(const std::filesystem::path& path, bool keep_alpha) {
  std::string name = path.string();
  std::vector<std::uint8_t> bytes;
  {
    ByteSource source(path, name);
    auto all = source.read(0, static_cast<std::size_t>(source.size()));
    if (all.size() != source.size()) fail(name, ": read only ", all.size(), " of ", source.size(), " bytes");
    bytes.assign(all.begin(), all.end());
  }
  return decode_image_bytes(bytes, name, keep_alpha);
}

Image crop_image(const Image& image, int left, int top, int width, int height) {
  if (left < 0 || top < 0 || width <= 0 || height <= 0 || left > image.width - width || top > image.height - height)
    fail("crop_image: the rectangle ", width, "x", height, " at (", left, ", ", top, ") does not lie inside the ",
         image.width, "x", image.height, " image");
  Image out = blank_image(width, height, image.channels);
  std::size_t row = std::size_t(width) * image.channels;
  for (int y = 0; y < height; ++y)
    std::memcpy(&out.pixels[y * row], &image.pixels[((std::size_t(top) + y) * image.width + left) * image.channels],
                row);
  return out;
}

Image flip_horizontal(const Image& image) {
  Image out = image;
  const int c = image.channels;
  for (int y = 0; y < image.height; ++y) {
    const std::uint8_t* src = &image.pixels[std::size_t(y) * image.width * c];
    std::uint8_t* dst = &out.pixels[std::size_t(y) * image.width * c];
    for (int x = 0; x < image.width; ++x) std::memcpy(dst + x * c, src + (image.width - 1 - x) * c, c);
  }
  return out;
}

}  // namespace fluxtrain::data
