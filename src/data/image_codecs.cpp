// Pixel decoders (libjpeg-turbo, libpng, libwebp and an own BMP reader) and the PNG writer with text
// chunks.
//
// libjpeg and libpng report errors through a callback that must not return: ours longjmp back to a
// setjmp placed in a small function that holds no object with a destructor (C++ allows longjmp only
// where a throw would run no destructors); that function returns false and its caller throws.
#include <cstdio>  // before jpeglib.h, which needs FILE

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <webp/decode.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <csetjmp>
#include <cstring>

#include "core/atomic_file.h"
#include "core/error.h"
#include "data/image.h"
#include "data/image_format.h"

namespace fluxtrain::data {
namespace detail {
namespace {

std::uint32_t le16(const std::uint8_t* p) {
  return (std::uint32_t{p[1]} << 8) | p[0];
}
std::uint32_t le32(const std::uint8_t* p) {
  return (le16(p + 2) << 16) | le16(p);
}
std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// ---------------------------------------------------------------------------------------------- JPEG

constexpr int kMaxJpegScans = 1000;  // a hostile progressive file can hold thousands of tiny scans

struct JpegDecoder {
  jpeg_decompress_struct info{};
  jpeg_error_mgr error{};
  jpeg_progress_mgr progress{};
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "";
  bool created = false;
  ~JpegDecoder() {
    if (created) jpeg_destroy_decompress(&info);
  }
};

JpegDecoder& decoder_of(j_common_ptr info) {
  return *static_cast<JpegDecoder*>(info->client_data);
}

void jpeg_on_error(j_common_ptr info) {
  JpegDecoder& decoder = decoder_of(info);
  info->err->format_message(info, decoder.message);
  std::longjmp(decoder.jump, 1);
}

// libjpeg only warns about truncated or corrupt entropy-coded data and fills the rest with grey; a
// training image must not silently turn grey, so those warnings are errors. Others (such as extraneous
// bytes before a marker, common in camera files) are ignored.
void jpeg_on_message(j_common_ptr info, int level) {
  if (level >= 0) return;  // trace messages
  int code = info->err->msg_code;
  if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE) jpeg_on_error(info);
}

void jpeg_on_progress(j_common_ptr info) {
  auto* decompress = reinterpret_cast<j_decompress_ptr>(info);
  if (decompress->input_scan_number <= kMaxJpegScans) return;
  JpegDecoder& decoder = decoder_of(info);
  std::snprintf(decoder.message, sizeof decoder.message, "more than %d progressive scans", kMaxJpegScans);
  std::longjmp(decoder.jump, 1);
}

bool jpeg_read_header_guarded(JpegDecoder* d, std::span<const std::uint8_t> bytes) {
  if (setjmp(d->jump)) return false;
  jpeg_create_decompress(&d->info);
  d->created = true;
  d->info.client_data = d;
  d->info.progress = &d->progress;
  jpeg_mem_src(&d->info, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&d->info, TRUE);
  return true;
}

bool jpeg_decode_guarded(JpegDecoder* d, std::uint8_t* out, std::size_t row_bytes) {
  if (setjmp(d->jump)) return false;
  jpeg_start_decompress(&d->info);
  while (d->info.output_scanline < d->info.output_height) {
    JSAMPROW row = out + d->info.output_scanline * row_bytes;
    jpeg_read_scanlines(&d->info, &row, 1);
  }
  jpeg_finish_decompress(&d->info);
  return true;
}

// ink / 255 as PIL computes it (Convert.c MULDIV255), so that CMYK files convert exactly as PIL does.
std::uint8_t muldiv255(unsigned a, unsigned b) {
  unsigned t = a * b + 128;
  return static_cast<std::uint8_t>(((t >> 8) + t) >> 8);
}

// ------------------------------------------------------------------------------------------------ PNG

struct PngCodec {
  png_structp png = nullptr;
  png_infop info = nullptr;
  bool writing = false;
  std::span<const std::uint8_t> input;
  std::size_t position = 0;
  bool truncated = false;
  std::vector<std::uint8_t> output;
  char message[256] = "";
  ~PngCodec() {
    if (writing)
      png_destroy_write_struct(&png, info ? &info : nullptr);
    else if (png)
      png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

void png_on_error(png_structp png, png_const_charp message) {
  auto* codec = static_cast<PngCodec*>(png_get_error_ptr(png));
  std::snprintf(codec->message, sizeof codec->message, "%s", message);
  png_longjmp(png, 1);
}
void png_on_warning(png_structp, png_const_charp) {}  // e.g. a known-wrong sRGB profile: harmless

void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* codec = static_cast<PngCodec*>(png_get_io_ptr(png));
  if (n > codec->input.size() - codec->position) {
    codec->truncated = true;
    png_error(png, "the file ends inside the image data");
  }
  std::memcpy(out, codec->input.data() + codec->position, n);
  codec->position += n;
}

void png_write_memory(png_structp png, png_bytep data, png_size_t n) {
  auto* codec = static_cast<PngCodec*>(png_get_io_ptr(png));
  try {
    codec->output.insert(codec->output.end(), data, data + n);
  } catch (const std::bad_alloc&) {
    png_error(png, "out of memory");
  }
}
void png_flush_memory(png_structp) {}

// Reads the header and sets the transformations to 8-bit RGB or RGBA.
bool png_read_header_guarded(PngCodec* c) {
  if (setjmp(png_jmpbuf(c->png))) return false;
  png_set_read_fn(c->png, c, png_read_memory);
  png_set_user_limits(c->png, 0x7fffffff, 0x7fffffff);  // our own pixel limit was checked on IHDR
  png_read_info(c->png, c->info);
  png_set_expand(c->png);  // palette -> RGB, grey < 8 bits -> 8 bits, tRNS -> alpha
  // 16 -> 8 bits keeps the high byte, as PIL does for RGB(A) and LA.
  png_set_strip_16(c->png);
  png_set_gray_to_rgb(c->png);
  png_set_interlace_handling(c->png);
  png_read_update_info(c->png, c->info);
  return true;
}

bool png_read_image_guarded(PngCodec* c, png_bytepp rows) {
  if (setjmp(png_jmpbuf(c->png))) return false;
  png_read_image(c->png, rows);
  return true;
}

bool png_write_guarded(PngCodec* c, const Image* image, png_bytepp rows, png_textp text, int text_count) {
  if (setjmp(png_jmpbuf(c->png))) return false;
  png_set_write_fn(c->png, c, png_write_memory, png_flush_memory);
  png_set_IHDR(c->png, c->info, static_cast<png_uint_32>(image->width), static_cast<png_uint_32>(image->height), 8,
               image->channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (text_count > 0) png_set_text(c->png, c->info, text, text_count);
  png_write_info(c->png, c->info);
  png_write_image(c->png, rows);
  png_write_end(c->png, nullptr);
  return true;
}

std::string latin1_to_utf8(std::string_view text) {
  std::string out;
  for (unsigned char ch : text) {
    if (ch < 0x80) {
      out += static_cast<char>(ch);
    } else {
      out += static_cast<char>(0xC0 | (ch >> 6));
      out += static_cast<char>(0x80 | (ch & 0x3F));
    }
  }
  return out;
}

std::string inflate_text(std::string_view compressed, const std::string& name) {
  constexpr std::size_t kMaxText = 16 << 20;
  z_stream stream{};
  if (inflateInit(&stream) != Z_OK) fail(name, ": zlib initialisation failed");
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  int status = Z_OK;
  while (status == Z_OK) {
    if (out.size() >= kMaxText) break;
    std::size_t before = out.size();
    out.resize(before + 65536);
    stream.next_out = reinterpret_cast<Bytef*>(out.data() + before);
    stream.avail_out = 65536;
    status = inflate(&stream, Z_NO_FLUSH);
    out.resize(before + 65536 - stream.avail_out);
  }
  inflateEnd(&stream);
  if (status != Z_STREAM_END)
    fail(name, ": corrupt compressed PNG text chunk (", out.size() >= kMaxText ? "over 16 MB" : "bad zlib data", ")");
  return out;
}

// ------------------------------------------------------------------------------------------------ BMP

// A channel of `bits` bits scaled to 8 as PIL's BMP unpackers do (v * 255 / max, truncated).
std::uint8_t scale_channel(std::uint32_t pixel, std::uint32_t mask) {
  if (mask == 0) return 255;
  int shift = std::countr_zero(mask);
  std::uint64_t max = mask >> shift;
  return static_cast<std::uint8_t>(((pixel & mask) >> shift) * 255 / max);
}

}  // namespace

Image decode_jpeg(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  JpegDecoder d;
  d.info.err = jpeg_std_error(&d.error);
  d.error.error_exit = jpeg_on_error;
  d.error.emit_message = jpeg_on_message;
  d.progress.progress_monitor = jpeg_on_progress;
  auto failed = [&]() {
    bool truncated = d.error.msg_code == JWRN_JPEG_EOF || d.error.msg_code == JWRN_HIT_MARKER;
    fail(name, ": ", truncated ? "truncated" : "corrupt or unsupported", " JPEG (libjpeg: ", d.message, ")",
         truncated ? "; re-download or re-export it" : "");
  };
  if (!jpeg_read_header_guarded(&d, bytes)) failed();
  check_size(name, "jpeg", d.info.image_width, d.info.image_height, max_pixels);
  bool cmyk = d.info.jpeg_color_space == JCS_CMYK || d.info.jpeg_color_space == JCS_YCCK;
  d.info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // greyscale is expanded to RGB by libjpeg-turbo
  int components = cmyk ? 4 : 3;
  Image image = blank_image(static_cast<int>(d.info.image_width), static_cast<int>(d.info.image_height), components);
  if (!jpeg_decode_guarded(&d, image.pixels.data(), std::size_t(image.width) * components)) failed();
  if (!cmyk) return image;
  // Adobe applications (which write the APP14 marker) store CMYK inverted: 255 means no ink. Without
  // that marker the values are taken as plain ink amounts (PIL assumes Adobe's inversion always).
  // Then R = (255 - C)(255 - K) / 255, as PIL's CMYK -> RGB (no ICC colour management).
  bool inverted = d.info.saw_Adobe_marker;
  Image rgb = blank_image(image.width, image.height, 3);
  for (std::size_t i = 0; i < rgb.pixels.size() / 3; ++i) {
    const std::uint8_t* s = &image.pixels[i * 4];
    unsigned no_black = inverted ? s[3] : 255 - s[3];
    for (int k = 0; k < 3; ++k) {
      unsigned ink = inverted ? 255 - s[k] : s[k];
      rgb.pixels[i * 3 + k] = static_cast<std::uint8_t>(no_black - muldiv255(ink, no_black));
    }
  }
  return rgb;
}

Image decode_png(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  PngCodec c;
  c.input = bytes;
  c.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error, png_on_warning);
  if (c.png) c.info = png_create_info_struct(c.png);
  if (!c.png || !c.info) fail(name, ": libpng could not start (out of memory)");
  auto failed = [&]() {
    if (c.truncated) fail(name, ": truncated PNG file (", c.message, "); re-download or re-export it");
    fail(name, ": corrupt or unsupported PNG (libpng: ", c.message, ")");
  };
  if (!png_read_header_guarded(&c)) failed();
  long long width = png_get_image_width(c.png, c.info), height = png_get_image_height(c.png, c.info);
  check_size(name, "png", width, height, max_pixels);
  int channels = png_get_channels(c.png, c.info);
  if (channels != 3 && channels != 4) fail(name, ": PNG decodes to ", channels, " channels (expected 3 or 4)");
  Image image = blank_image(static_cast<int>(width), static_cast<int>(height), channels);
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y) rows[y] = &image.pixels[std::size_t(y) * image.width * image.channels];
  if (!png_read_image_guarded(&c, rows.data())) failed();
  return image;
}

Image decode_webp(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  auto status_text = [](VP8StatusCode status) -> const char* {
    switch (status) {
      case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated WebP file; re-download or re-export it";
      case VP8_STATUS_BITSTREAM_ERROR: return "corrupt WebP data";
      case VP8_STATUS_UNSUPPORTED_FEATURE: return "WebP feature that libwebp does not support";
      case VP8_STATUS_OUT_OF_MEMORY: return "out of memory while decoding WebP";
      default: return "WebP decoding failed";
    }
  };
  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) fail(name, ": libwebp version mismatch");
  VP8StatusCode status = WebPGetFeatures(bytes.data(), bytes.size(), &config.input);
  if (status != VP8_STATUS_OK) fail(name, ": ", status_text(status));
  if (config.input.has_animation) fail(name, ": animated WebP is not supported; export a still image");
  check_size(name, "webp", config.input.width, config.input.height, max_pixels);
  Image image = blank_image(config.input.width, config.input.height, config.input.has_alpha ? 4 : 3);
  config.output.colorspace = image.channels == 4 ? MODE_RGBA : MODE_RGB;
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = image.pixels.data();
  config.output.u.RGBA.stride = image.width * image.channels;
  config.output.u.RGBA.size = image.pixels.size();
  status = WebPDecode(bytes.data(), bytes.size(), &config);
  WebPFreeDecBuffer(&config.output);
  if (status != VP8_STATUS_OK) fail(name, ": ", status_text(status));
  return image;
}

BmpLayout parse_bmp_layout(ByteSource& source, const std::string& name) {
  auto truncated = [&]() {
    fail(name, ": truncated BMP file: it ends inside the header; re-download or re-export it");
  };
  auto file_header = source.read(0, 18);
  if (file_header.size() < 18) truncated();
  BmpLayout layout;
  layout.pixel_offset = le32(&file_header[10]);
  std::uint32_t header_size = le32(&file_header[14]);
  static constexpr std::uint32_t kHeaderSizes[] = {12, 40, 52, 56, 64, 108, 124};
  if (std::find(std::begin(kHeaderSizes), std::end(kHeaderSizes), header_size) == std::end(kHeaderSizes))
    fail(name, ": unsupported BMP header of ", header_size, " bytes (expected 12, 40, 52, 56, 64, 108 or 124)");
  auto h = source.read(14, header_size + 16);  // + 16: the masks that may follow a 40-byte header
  if (h.size() < header_size) truncated();
  std::uint32_t compression = 0, colors = 0;
  int palette_entry = 4;
  if (header_size == 12) {
    layout.width = static_cast<int>(le16(&h[4]));
    layout.height = static_cast<int>(le16(&h[6]));
    layout.bits = static_cast<int>(le16(&h[10]));
    palette_entry = 3;
  } else {
    layout.width = static_cast<std::int32_t>(le32(&h[4]));
    std::int32_t height = static_cast<std::int32_t>(le32(&h[8]));
    layout.top_down = height < 0;
    layout.height = height == INT32_MIN ? 0 : std::abs(height);
    layout.bits = static_cast<int>(le16(&h[14]));
    compression = le32(&h[16]);
    colors = le32(&h[32]);
  }
  check_size(name, "bmp", layout.width, layout.height, std::uint64_t{1} << 40);
  int bits = layout.bits;
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32)
    fail(name, ": unsupported BMP pixel depth of ", bits, " bits (expected 1, 4, 8, 16, 24 or 32)");
  if (compression == 1 || compression == 2)
    fail(name, ": RLE-compressed BMP is not supported; re-save it uncompressed or as PNG");
  if (compression != 0 && compression != 3 && compression != 6)
    fail(name, ": unsupported BMP compression type ", compression, " (expected uncompressed or bit fields)");
  if (bits <= 8) {
    std::uint64_t count = colors == 0 || colors > (1u << bits) ? (1u << bits) : colors;
    auto palette = source.read(14 + header_size, count * palette_entry);
    count = palette.size() / palette_entry;  // a short palette leaves the missing entries black
    layout.palette.assign((std::size_t(1) << bits) * 3, 0);
    for (std::size_t i = 0; i < count; ++i)
      for (int k = 0; k < 3; ++k) layout.palette[i * 3 + k] = palette[i * palette_entry + 2 - k];
  } else if (bits == 16 || bits == 32) {
    if (compression == 0) {
      std::uint32_t defaults16[4] = {0x7C00, 0x03E0, 0x001F, 0}, defaults32[4] = {0xFF0000, 0xFF00, 0xFF, 0};
      std::copy_n(bits == 16 ? defaults16 : defaults32, 4, layout.masks);
    } else {
      // Bit fields: inside the header from 52 bytes on (alpha from 56), else just after it.
      int count = header_size >= 56 || compression == 6 ? 4 : 3;
      std::size_t at = header_size >= 52 ? 40 : header_size;
      if (h.size() < at + 4 * count) truncated();
      for (int k = 0; k < count; ++k) layout.masks[k] = le32(&h[at + 4 * k]);
      for (std::uint32_t mask : layout.masks) {
        std::uint32_t shifted = mask ? mask >> std::countr_zero(mask) : 0;
        if ((shifted & (shifted + 1)) != 0)
          fail(name, ": unsupported BMP bit field mask 0x", std::hex, mask, " (not contiguous)");
      }
      if (!layout.masks[0] || !layout.masks[1] || !layout.masks[2])
        fail(name, ": unsupported BMP bit fields: a colour mask is zero");
    }
  }
  return layout;
}

Image decode_bmp(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  ByteSource source(bytes);
  BmpLayout layout = parse_bmp_layout(source, name);
  check_size(name, "bmp", layout.width, layout.height, max_pixels);
  const int width = layout.width, height = layout.height, bits = layout.bits;
  std::uint64_t stride = (std::uint64_t(bits) * width + 31) / 32 * 4;
  std::uint64_t needed = layout.pixel_offset + stride * (height - 1) + (std::uint64_t(bits) * width + 7) / 8;
  if (needed > bytes.size())
    fail(name, ": truncated BMP file: the pixels need ", needed, " bytes but the file has ", bytes.size(),
         "; re-download or re-export it");
  bool alpha = (bits == 16 || bits == 32) && layout.masks[3] != 0;
  Image image = blank_image(width, height, alpha ? 4 : 3);
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* row = bytes.data() + layout.pixel_offset + stride * (layout.top_down ? y : height - 1 - y);
    std::uint8_t* out = &image.pixels[std::size_t(y) * width * image.channels];
    for (int x = 0; x < width; ++x, out += image.channels) {
      if (bits <= 8) {
        int per_byte = 8 / bits;
        unsigned index = (row[x / per_byte] >> (8 - bits * (x % per_byte + 1))) & ((1u << bits) - 1);
        std::memcpy(out, &layout.palette[index * 3], 3);
      } else if (bits == 24) {
        out[0] = row[3 * x + 2], out[1] = row[3 * x + 1], out[2] = row[3 * x];
      } else {
        std::uint32_t pixel = bits == 16 ? le16(row + 2 * x) : le32(row + 4 * x);
        for (int k = 0; k < image.channels; ++k) out[k] = scale_channel(pixel, layout.masks[k]);
      }
    }
  }
  return image;
}

}  // namespace detail

using namespace detail;

void save_png(const std::filesystem::path& path, const Image& image,
              const std::vector<std::pair<std::string, std::string>>& text) {
  const std::string name = path.string();
  if ((image.channels != 3 && image.channels != 4) || image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != std::size_t(image.width) * image.height * image.channels)
    fail(name, ": cannot save a ", image.width, "x", image.height, "x", image.channels, " image of ",
         image.pixels.size(), " bytes as PNG (expected RGB or RGBA with width * height * channels bytes)");
  std::vector<png_text> chunks(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto& [key, value] = text[i];
    bool printable = std::all_of(key.begin(), key.end(), [](char ch) { return ch >= 32 && ch <= 126; });
    if (key.empty() || key.size() > 79 || !printable || key.front() == ' ' || key.back() == ' ' ||
        key.find("  ") != std::string::npos)
      fail(name, ": PNG text key '", key, "' is invalid (expected 1-79 printable ASCII characters without leading, ",
           "trailing or double spaces)");
    if (value.find('\0') != std::string::npos) fail(name, ": PNG text '", key, "' contains a NUL character");
    bool ascii = std::all_of(value.begin(), value.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x80; });
    // ASCII is the same in Latin-1 (tEXt); anything else is written as UTF-8 in iTXt.
    chunks[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(key.c_str());
    chunks[i].text = const_cast<char*>(value.c_str());
    chunks[i].text_length = ascii ? value.size() : 0;
    chunks[i].itxt_length = ascii ? 0 : value.size();
    chunks[i].lang = nullptr;
    chunks[i].lang_key = nullptr;
  }
  PngCodec c;
  c.writing = true;
  c.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error, png_on_warning);
  if (c.png) c.info = png_create_info_struct(c.png);
  if (!c.png || !c.info) fail(name, ": libpng could not start (out of memory)");
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y)
    rows[y] = const_cast<png_bytep>(&image.pixels[std::size_t(y) * image.width * image.channels]);
  if (!png_write_guarded(&c, &image, rows.data(), chunks.data(), static_cast<int>(chunks.size())))
    fail(name, ": PNG encoding failed (libpng: ", c.message, ")");
  AtomicFile file(name);
  file.write(c.output.data(), c.output.size());
  file.commit();
}

std::vector<std::pair<std::string, std::string>> read_png_text(const std::filesystem::path& path) {
  const std::string name = path.string();
  ByteSource source(path, name);
  auto signature = source.read(0, 8);
  if (signature.size() < 8 || std::memcmp(signature.data(), "\x89PNG\r\n\x1a\n", 8) != 0)
    fail(name, ": not a PNG file (no PNG signature)");
  std::vector<std::pair<std::string, std::string>> text;
  for (std::uint64_t pos = 8;;) {
    auto head = source.read(pos, 8);
    if (head.size() < 8) fail(name, ": truncated PNG file: no IEND chunk");
    std::uint32_t length = be32(head.data());
    std::string type(reinterpret_cast<const char*>(head.data() + 4), 4);
    if (type == "IEND") break;
    if (length > 0x7fffffff || pos + 12 + length > source.size())
      fail(name, ": truncated PNG file: the ", type, " chunk at byte ", pos, " runs past the end");
    if (type == "tEXt" || type == "zTXt" || type == "iTXt") {
      auto data = source.read(pos + 8, length);
      std::string_view chunk(reinterpret_cast<const char*>(data.data()), data.size());
      std::size_t key_end = chunk.find('\0');
      if (key_end == std::string_view::npos) fail(name, ": corrupt PNG ", type, " chunk at byte ", pos, ": no key");
      std::string key = latin1_to_utf8(chunk.substr(0, key_end));
      std::string_view rest = chunk.substr(key_end + 1);
      if (type == "tEXt") {
        text.emplace_back(key, latin1_to_utf8(rest));
      } else if (type == "zTXt") {
        if (rest.empty()) fail(name, ": corrupt PNG zTXt chunk '", key, "'");
        text.emplace_back(key, latin1_to_utf8(inflate_text(rest.substr(1), name)));
      } else {
        // iTXt: compression flag, method, language\0, translated keyword\0, UTF-8 text.
        std::size_t language_end = rest.size() >= 2 ? rest.find('\0', 2) : std::string_view::npos;
        std::size_t translated_end =
            language_end == std::string_view::npos ? language_end : rest.find('\0', language_end + 1);
        if (translated_end == std::string_view::npos) fail(name, ": corrupt PNG iTXt chunk '", key, "'");
        std::string_view value = rest.substr(translated_end + 1);
        text.emplace_back(key, rest[0] ? inflate_text(value, name) : std::string(value));
      }
    }
    pos += 12 + length;
  }
  return text;
}

}  // namespace fluxtrain::data
