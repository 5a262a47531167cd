// Image decoding, orientation, resizing and PNG writing. Every fixture is written here, with the codec
// libraries or byte by byte, so the expected pixels are known independently of the decoder.
#include <cstdio>  // before jpeglib.h

#include <gtest/gtest.h>
#include <jpeglib.h>
#include <png.h>
#include <webp/encode.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/image.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace fluxtrain::data;
using Bytes = std::vector<std::uint8_t>;

namespace {

using fluxtrain::testing::error_of;

void write_bytes(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Bytes read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// A w x h image whose every pixel differs: (x * 40 + y, y * 50 + x, 200 - x - y).
Image pattern(int w, int h, int channels = 3) {
  Image image{w, h, channels, Bytes(std::size_t(w) * h * channels)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      std::uint8_t* p = &image.pixels[(std::size_t(y) * w + x) * channels];
      p[0] = static_cast<std::uint8_t>(x * 40 + y), p[1] = static_cast<std::uint8_t>(y * 50 + x),
      p[2] = static_cast<std::uint8_t>(200 - x - y);
      if (channels == 4)
        p[3] = static_cast<std::uint8_t>((x + y) * 30 % 250 + 5);  // never 0: encoders
                                                                   // may drop invisible colours
    }
  return image;
}

// --- writers ---

void append_le(Bytes& out, std::uint32_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// A TIFF block holding only IFD0 with the Orientation tag.
Bytes tiff_orientation(int orientation, bool big_endian) {
  Bytes t;
  auto u16 = [&](std::uint32_t v) {
    if (big_endian)
      t.push_back(v >> 8), t.push_back(v & 0xff);
    else
      t.push_back(v & 0xff), t.push_back(v >> 8);
  };
  auto u32 = [&](std::uint32_t v) {
    if (big_endian)
      u16(v >> 16), u16(v & 0xffff);
    else
      u16(v & 0xffff), u16(v >> 16);
  };
  t.push_back(big_endian ? 'M' : 'I'), t.push_back(big_endian ? 'M' : 'I');
  u16(42), u32(8);                        // header, IFD0 at 8
  u16(2);                                 // two entries
  u16(0x010F), u16(2), u32(4), u32('a');  // Make (ASCII), a decoy before the tag we want
  u16(0x0112), u16(3), u32(1), u16(orientation), u16(0);
  u32(0);  // no next IFD
  return t;
}

// Inserts an APP1 "Exif" segment after SOI.
Bytes with_exif(const Bytes& jpeg, int orientation, bool big_endian = false) {
  Bytes tiff = tiff_orientation(orientation, big_endian);
  Bytes segment = {0xFF, 0xE1};
  std::uint32_t length = 2 + 6 + static_cast<std::uint32_t>(tiff.size());
  segment.push_back(length >> 8), segment.push_back(length & 0xff);
  for (char ch : std::string("Exif\0\0", 6)) segment.push_back(static_cast<std::uint8_t>(ch));
  segment.insert(segment.end(), tiff.begin(), tiff.end());
  Bytes out(jpeg.begin(), jpeg.begin() + 2);
  out.insert(out.end(), segment.begin(), segment.end());
  out.insert(out.end(), jpeg.begin() + 2, jpeg.end());
  return out;
}

// components 1 (grey, first channel of `image`), 3 (RGB) or 4 (CMYK from `cmyk`, Adobe marker written).
Bytes encode_jpeg(const Image& image, int components = 3, int quality = 95, bool progressive = false,
                  const Bytes* cmyk = nullptr, bool ycck = false, bool arithmetic = false) {
  jpeg_compress_struct info;
  jpeg_error_mgr error;
  info.err = jpeg_std_error(&error);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = image.width;
  info.image_height = image.height;
  info.input_components = components;
  info.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  if (ycck) jpeg_set_colorspace(&info, JCS_YCCK);
  info.arith_code = arithmetic;
  for (int i = 0; i < info.num_components; ++i) info.comp_info[i].h_samp_factor = info.comp_info[i].v_samp_factor = 1;
  if (progressive) jpeg_simple_progression(&info);
  jpeg_start_compress(&info, TRUE);
  Bytes row(std::size_t(image.width) * components);
  while (info.next_scanline < info.image_height) {
    int y = info.next_scanline;
    for (int x = 0; x < image.width; ++x)
      for (int k = 0; k < components; ++k)
        row[x * components + k] = cmyk ? (*cmyk)[(std::size_t(y) * image.width + x) * 4 + k]
                                       : image.pixels[(std::size_t(y) * image.width + x) * image.channels + k];
    JSAMPROW pointer = row.data();
    jpeg_write_scanlines(&info, &pointer, 1);
  }
  jpeg_finish_compress(&info);
  Bytes out(buffer, buffer + size);
  jpeg_destroy_compress(&info);
  std::free(buffer);
  return out;
}

struct PngSpec {
  explicit PngSpec(int color_type = PNG_COLOR_TYPE_RGB, int bit_depth = 8)
      : color_type(color_type), bit_depth(bit_depth) {}
  int color_type;
  int bit_depth;
  bool interlaced = false;
  std::vector<png_color> palette;
  Bytes palette_alpha;  // tRNS for palette images
  Bytes exif;           // eXIf
};

// rows: raw PNG sample rows for the spec (big-endian 16-bit samples).
Bytes encode_png(int w, int h, const PngSpec& spec, const std::vector<Bytes>& rows) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  Bytes out;
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        auto* o = static_cast<Bytes*>(png_get_io_ptr(p));
        o->insert(o->end(), data, data + n);
      },
      nullptr);
  png_set_IHDR(png, info, w, h, spec.bit_depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!spec.palette.empty()) png_set_PLTE(png, info, spec.palette.data(), static_cast<int>(spec.palette.size()));
  if (!spec.palette_alpha.empty())
    png_set_tRNS(png, info, spec.palette_alpha.data(), static_cast<int>(spec.palette_alpha.size()), nullptr);
  if (!spec.exif.empty())
    png_set_eXIf_1(png, info, static_cast<png_uint_32>(spec.exif.size()), const_cast<png_bytep>(spec.exif.data()));
  png_write_info(png, info);
  if (spec.interlaced) png_set_interlace_handling(png);
  std::vector<png_bytep> pointers;
  for (const Bytes& row : rows) pointers.push_back(const_cast<png_bytep>(row.data()));
  png_write_image(png, pointers.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::vector<Bytes> rows_of(const Image& image) {
  std::vector<Bytes> rows;
  std::size_t stride = std::size_t(image.width) * image.channels;
  for (int y = 0; y < image.height; ++y)
    rows.emplace_back(image.pixels.begin() + y * stride, image.pixels.begin() + (y + 1) * stride);
  return rows;
}

Bytes encode_webp_lossless(const Image& image) {
  std::uint8_t* output = nullptr;
  std::size_t size =
      image.channels == 4
          ? WebPEncodeLosslessRGBA(image.pixels.data(), image.width, image.height, image.width * 4, &output)
          : WebPEncodeLosslessRGB(image.pixels.data(), image.width, image.height, image.width * 3, &output);
  Bytes out(output, output + size);
  WebPFree(output);
  return out;
}

// Rewraps a simple WebP (RIFF WEBP + one VP8L chunk) as an extended one with an EXIF chunk after it.
Bytes webp_with_exif(const Bytes& simple, int w, int h, const Bytes& tiff) {
  Bytes body = {'W', 'E', 'B', 'P', 'V', 'P', '8', 'X'};
  append_le(body, 10, 4);
  body.push_back(0x08 | 0x10), body.push_back(0), body.push_back(0), body.push_back(0);  // EXIF + alpha flags
  append_le(body, w - 1, 3), append_le(body, h - 1, 3);
  body.insert(body.end(), simple.begin() + 12, simple.end());  // the VP8L chunk
  body.insert(body.end(), {'E', 'X', 'I', 'F'});
  append_le(body, static_cast<std::uint32_t>(tiff.size()), 4);
  body.insert(body.end(), tiff.begin(), tiff.end());
  if (tiff.size() % 2) body.push_back(0);
  Bytes out = {'R', 'I', 'F', 'F'};
  append_le(out, static_cast<std::uint32_t>(body.size()), 4);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

// A BMP with a 40-byte header (or a 108-byte V4 header with bit masks when masks != nullptr).
Bytes encode_bmp(int w, int h, int bits, bool top_down, const std::vector<Bytes>& rows_top_first,
                 const Bytes& palette_bgrx = {}, const std::uint32_t* masks = nullptr) {
  std::uint32_t header = masks ? 108 : 40, stride = (bits * w + 31) / 32 * 4;
  std::uint32_t offset = 14 + header + static_cast<std::uint32_t>(palette_bgrx.size());
  Bytes out = {'B', 'M'};
  append_le(out, offset + stride * h, 4), append_le(out, 0, 4), append_le(out, offset, 4);
  append_le(out, header, 4), append_le(out, w, 4), append_le(out, top_down ? -h : h, 4);
  append_le(out, 1, 2), append_le(out, bits, 2), append_le(out, masks ? 3 : 0, 4);
  append_le(out, stride * h, 4), append_le(out, 2835, 4), append_le(out, 2835, 4);
  append_le(out, static_cast<std::uint32_t>(palette_bgrx.size() / 4), 4), append_le(out, 0, 4);
  if (masks) {
    for (int k = 0; k < 4; ++k) append_le(out, masks[k], 4);
    out.resize(14 + header, 0);
  }
  out.insert(out.end(), palette_bgrx.begin(), palette_bgrx.end());
  for (int i = 0; i < h; ++i) {
    Bytes row = rows_top_first[top_down ? i : h - 1 - i];
    row.resize(stride, 0);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

int max_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  int worst = 0;
  for (std::size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i)
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return worst;
}

class ImageTest : public ::testing::Test {
 protected:
  fs::path dir = fluxtrain::testing::fresh_dir("image");
  fs::path file(const std::string& name, const Bytes& bytes) {
    write_bytes(dir / name, bytes);
    return dir / name;
  }
};

}  // namespace

TEST_F(ImageTest, PngRoundTripKeepsPixelsAndText) {
  for (int channels : {3, 4}) {
    Image image = pattern(7, 5, channels);
    fs::path path = dir / ("round" + std::to_string(channels) + ".png");
    std::vector<std::pair<std::string, std::string>> text = {
        {"prompt", "a photo of a cat"}, {"seed", "42"}, {"caption", "café ☕ 猫"}};
    save_png(path, image, text);
    Image back = load_image(path, channels == 4);
    EXPECT_EQ(back.width, 7);
    EXPECT_EQ(back.channels, channels);
    EXPECT_EQ(back.pixels, image.pixels);
    EXPECT_EQ(read_png_text(path), text);
    ImageInfo info = probe_image(path);
    EXPECT_EQ(info.format, "png");
    EXPECT_EQ(info.has_alpha, channels == 4);
  }
  // Atomic: only the two PNGs are in the folder, no temporary file is left.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 2);
  // ASCII goes to tEXt, anything else to iTXt.
  Bytes bytes = read_bytes(dir / "round3.png");
  std::string all(bytes.begin(), bytes.end());
  EXPECT_NE(all.find("tEXtprompt"), std::string::npos);
  EXPECT_NE(all.find("iTXtcaption"), std::string::npos);
  EXPECT_NE(error_of([&] {
              save_png(dir / "bad.png", pattern(2, 2), {{" lead", "x"}});
            }).find("key"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              save_png(dir / "bad.png", Image{2, 2, 3, Bytes(5)});
            }).find("cannot save"),
            std::string::npos);
}

TEST_F(ImageTest, RgbaCompositesOntoWhite) {
  Image image{2, 1, 4, {10, 20, 30, 255, 100, 0, 200, 51}};
  save_png(dir / "a.png", image);
  Image rgb = load_image(dir / "a.png");
  // (c * a + 255 * (255 - a)) / 255 rounded: alpha 51 -> 0.2 c + 204.
  EXPECT_EQ(rgb.pixels, (Bytes{10, 20, 30, 224, 204, 244}));
  Image rgba = load_image(dir / "a.png", true);
  EXPECT_EQ(rgba.pixels, image.pixels);
  save_png(dir / "b.png", pattern(2, 1));
  EXPECT_EQ(load_image(dir / "b.png", true).pixels, (Bytes{0, 0, 200, 255, 40, 1, 199, 255}));
}

TEST_F(ImageTest, PngVariantsDecodeToEightBitRgb) {
  const int w = 9, h = 7;  // odd sizes exercise every Adam7 pass
  Image rgb = pattern(w, h);
  // Greyscale 8-bit, and grey + alpha.
  std::vector<Bytes> grey(h), grey_alpha(h), rgb16(h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      std::uint8_t v = static_cast<std::uint8_t>(x * 25 + y);
      grey[y].push_back(v);
      grey_alpha[y].push_back(v), grey_alpha[y].push_back(static_cast<std::uint8_t>(255 - x * 20));
      for (int k = 0; k < 3; ++k) {
        std::uint16_t sample = static_cast<std::uint16_t>(rgb.pixels[(y * w + x) * 3 + k] * 257 + 100);
        rgb16[y].push_back(sample >> 8), rgb16[y].push_back(sample & 0xff);
      }
    }
  for (bool interlaced : {false, true}) {
    SCOPED_TRACE(interlaced ? "interlaced" : "progressive rows");
    auto decode = [&](const PngSpec& spec, const std::vector<Bytes>& rows, bool alpha = false) {
      PngSpec s = spec;
      s.interlaced = interlaced;
      return load_image(file("v.png", encode_png(w, h, s, rows)), alpha);
    };
    EXPECT_EQ(decode(PngSpec(), rows_of(rgb)).pixels, rgb.pixels);
    Image g = decode(PngSpec(PNG_COLOR_TYPE_GRAY), grey);
    Image ga = decode(PngSpec(PNG_COLOR_TYPE_GRAY_ALPHA), grey_alpha, true);
    Image c16 = decode(PngSpec(PNG_COLOR_TYPE_RGB, 16), rgb16);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        std::size_t i = std::size_t(y) * w + x;
        for (int k = 0; k < 3; ++k) {
          EXPECT_EQ(g.pixels[i * 3 + k], grey[y][x]);
          EXPECT_EQ(ga.pixels[i * 4 + k], grey_alpha[y][2 * x]);
          EXPECT_EQ(c16.pixels[i * 3 + k], rgb16[y][(3 * x + k) * 2]);  // the high byte
        }
        EXPECT_EQ(ga.pixels[i * 4 + 3], grey_alpha[y][2 * x + 1]);
      }
    // 4-bit palette with tRNS: index = (x + y) % 3; entry 1 half transparent.
    PngSpec palette(PNG_COLOR_TYPE_PALETTE, 4);
    palette.palette = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}};
    palette.palette_alpha = {255, 128};
    std::vector<Bytes> indices(h, Bytes((w + 1) / 2));
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) indices[y][x / 2] |= static_cast<std::uint8_t>(((x + y) % 3) << (x % 2 ? 0 : 4));
    Image p = decode(palette, indices, true);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const std::uint8_t* px = &p.pixels[(std::size_t(y) * w + x) * 4];
        const png_color& entry = palette.palette[(x + y) % 3];
        EXPECT_EQ(Bytes(px, px + 4),
                  (Bytes{entry.red, entry.green, entry.blue, static_cast<std::uint8_t>((x + y) % 3 == 1 ? 128 : 255)}));
      }
  }
}

// The stored image   1 2 3   viewed under each EXIF orientation (PIL.ImageOps.exif_transpose).
//                    4 5 6
TEST_F(ImageTest, ExifOrientationAllEight) {
  const std::vector<std::vector<int>> expected = {
      {},
      {1, 2, 3, 4, 5, 6},  // 1: as stored (3 x 2)
      {3, 2, 1, 6, 5, 4},  // 2: mirrored
      {6, 5, 4, 3, 2, 1},  // 3: rotated 180
      {4, 5, 6, 1, 2, 3},  // 4: flipped
      {1, 4, 2, 5, 3, 6},  // 5: transposed (2 x 3)
      {4, 1, 5, 2, 6, 3},  // 6: rotated 90 clockwise
      {6, 3, 5, 2, 4, 1},  // 7: transverse
      {3, 6, 2, 5, 1, 4},  // 8: rotated 90 counter-clockwise
  };
  Image stored{3, 2, 3, {}};
  for (int v = 1; v <= 6; ++v) stored.pixels.insert(stored.pixels.end(), {std::uint8_t(v), 0, 0});
  for (int orientation = 1; orientation <= 8; ++orientation) {
    SCOPED_TRACE(orientation);
    bool big_endian = orientation % 2 == 0;
    PngSpec spec;
    spec.exif = tiff_orientation(orientation, big_endian);
    fs::path path = file("o.png", encode_png(3, 2, spec, rows_of(stored)));
    Image image = load_image(path);
    bool swapped = orientation >= 5;
    EXPECT_EQ(image.width, swapped ? 2 : 3);
    EXPECT_EQ(image.height, swapped ? 3 : 2);
    std::vector<int> reds;
    for (std::size_t i = 0; i < image.pixels.size(); i += 3) reds.push_back(image.pixels[i]);
    EXPECT_EQ(reds, expected[orientation]);
    ImageInfo info = probe_image(path);
    EXPECT_EQ(info.width, image.width);
    EXPECT_EQ(info.height, image.height);
  }
}

TEST_F(ImageTest, JpegDecodesGreyRgbCmykAndExif) {
  // Flat 8x8 blocks decode (almost) exactly; the blocks are 16 x 8 pixels: left red-ish, right blue-ish.
  Image image{32, 16, 3, Bytes(32 * 16 * 3)};
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 32; ++x) {
      std::uint8_t* p = &image.pixels[(y * 32 + x) * 3];
      bool left = x < 16, top = y < 8;
      p[0] = left ? 200 : 30, p[1] = top ? 60 : 160, p[2] = left ? 40 : 220;
    }
  for (bool progressive : {false, true}) {
    Image rgb = load_image(file("c.jpg", encode_jpeg(image, 3, 100, progressive)));
    EXPECT_LE(max_diff(rgb, image), 3);
  }
  Image arithmetic = load_image(file("a.jpg", encode_jpeg(image, 3, 100, false, nullptr, false, true)));
  EXPECT_LE(max_diff(arithmetic, image), 3);
  Image grey = load_image(file("g.jpg", encode_jpeg(image, 1, 100)));
  for (std::size_t i = 0; i < grey.pixels.size(); i += 3) {
    EXPECT_EQ(grey.pixels[i], grey.pixels[i + 1]);
    EXPECT_LE(std::abs(grey.pixels[i] - image.pixels[i]), 2);  // the first channel was written as grey
  }
  // CMYK with the Adobe marker: libjpeg writes the values as given, Adobe stores 255 - ink.
  // Ink (C, M, Y, K) = (0, 128, 255, 51): R = 204, G = (127 * 204) / 255 = 101.6 -> 102, B = 0.
  Bytes adobe(32 * 16 * 4);
  for (std::size_t i = 0; i < adobe.size(); i += 4)
    adobe[i] = 255, adobe[i + 1] = 127, adobe[i + 2] = 0, adobe[i + 3] = 204;
  for (bool ycck : {false, true}) {
    SCOPED_TRACE(ycck ? "YCCK" : "CMYK");
    Image cmyk = load_image(file("k.jpg", encode_jpeg(image, 4, 100, false, &adobe, ycck)));
    for (std::size_t i = 0; i < cmyk.pixels.size(); i += 3) {
      EXPECT_NEAR(cmyk.pixels[i], 204, 2);
      EXPECT_NEAR(cmyk.pixels[i + 1], 102, 2);
      EXPECT_NEAR(cmyk.pixels[i + 2], 0, 2);
    }
  }
  // Orientation 6 (rotate 90 clockwise): the stored top-left block (red, top) lands top-right.
  Bytes jpeg = encode_jpeg(image, 3, 100);
  for (bool big_endian : {false, true}) {
    fs::path path = file("e.jpg", with_exif(jpeg, 6, big_endian));
    Image rotated = load_image(path);
    ASSERT_EQ(rotated.width, 16);
    ASSERT_EQ(rotated.height, 32);
    EXPECT_NEAR(rotated.pixels[(0 * 16 + 15) * 3 + 0], 200, 3);  // top right: stored top-left
    EXPECT_NEAR(rotated.pixels[(0 * 16 + 15) * 3 + 1], 60, 3);
    EXPECT_NEAR(rotated.pixels[(31 * 16 + 0) * 3 + 2], 220, 3);  // bottom left: stored bottom-right
    ImageInfo info = probe_image(path);
    EXPECT_EQ(info.width, 16);
    EXPECT_EQ(info.height, 32);
    EXPECT_EQ(info.format, "jpeg");
  }
  // Out-of-range and malformed EXIF are ignored, never fatal.
  EXPECT_EQ(load_image(file("e9.jpg", with_exif(jpeg, 9))).width, 32);
  Bytes broken = with_exif(jpeg, 6);
  broken[2 + 4 + 6 + 4] = 0xFF;  // IFD0 offset far outside the block
  EXPECT_EQ(load_image(file("eb.jpg", broken)).width, 32);
}

TEST_F(ImageTest, WebpLosslessExactWithAlphaAndExif) {
  Image rgba = pattern(11, 6, 4);
  Bytes simple = encode_webp_lossless(rgba);
  EXPECT_EQ(load_image(file("a.webp", simple), true).pixels, rgba.pixels);
  EXPECT_TRUE(probe_image(dir / "a.webp").has_alpha);
  Image rgb = pattern(11, 6);
  EXPECT_EQ(load_image(file("b.webp", encode_webp_lossless(rgb))).pixels, rgb.pixels);
  fs::path rotated = file("r.webp", webp_with_exif(simple, 11, 6, tiff_orientation(8, false)));
  Image image = load_image(rotated, true);
  ASSERT_EQ(image.width, 6);
  ASSERT_EQ(image.height, 11);
  // Orientation 8 (90 counter-clockwise): the stored top-right pixel lands top-left.
  EXPECT_EQ(Bytes(image.pixels.begin(), image.pixels.begin() + 4), Bytes(&rgba.pixels[10 * 4], &rgba.pixels[11 * 4]));
  ImageInfo info = probe_image(rotated);
  EXPECT_EQ(info.width, 6);
  EXPECT_EQ(info.height, 11);
  EXPECT_EQ(info.format, "webp");
}

TEST_F(ImageTest, BmpLayouts) {
  const int w = 5, h = 3;
  Image rgb = pattern(w, h);
  std::vector<Bytes> bgr(h), bgra(h), indices(h), bits1(h, Bytes(1));
  Bytes palette;  // BGRX: index i -> (i * 60, 255 - i * 60, 7)
  for (int i = 0; i < 4; ++i) palette.insert(palette.end(), {7, std::uint8_t(255 - i * 60), std::uint8_t(i * 60), 0});
  Image rgba = pattern(w, h, 4);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const std::uint8_t* p = &rgb.pixels[(y * w + x) * 3];
      const std::uint8_t* q = &rgba.pixels[(y * w + x) * 4];
      bgr[y].insert(bgr[y].end(), {p[2], p[1], p[0]});
      bgra[y].insert(bgra[y].end(), {q[2], q[1], q[0], q[3]});
      indices[y].push_back(static_cast<std::uint8_t>((x + y) % 4));
      if ((x + y) % 2) bits1[y][0] |= static_cast<std::uint8_t>(0x80 >> x);
    }
  for (bool top_down : {false, true}) {
    SCOPED_TRACE(top_down ? "top-down" : "bottom-up");
    EXPECT_EQ(load_image(file("a.bmp", encode_bmp(w, h, 24, top_down, bgr))).pixels, rgb.pixels);
    const std::uint32_t masks[4] = {0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000};
    fs::path with_alpha = file("b.bmp", encode_bmp(w, h, 32, top_down, bgra, {}, masks));
    EXPECT_EQ(load_image(with_alpha, true).pixels, rgba.pixels);
    EXPECT_TRUE(probe_image(with_alpha).has_alpha);
    // 32-bit without masks: the fourth byte is padding (as PIL reads it).
    EXPECT_EQ(load_image(file("c.bmp", encode_bmp(w, h, 32, top_down, bgra)), true).pixels[3], 255);
    for (int bits : {8, 1}) {
      Image p = load_image(file("p.bmp", encode_bmp(w, h, bits, top_down, bits == 8 ? indices : bits1, palette)));
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          int index = bits == 8 ? (x + y) % 4 : (x + y) % 2;
          const std::uint8_t* px = &p.pixels[(y * w + x) * 3];
          EXPECT_EQ(Bytes(px, px + 3), (Bytes{std::uint8_t(index * 60), std::uint8_t(255 - index * 60), 7}));
        }
    }
  }
  EXPECT_EQ(probe_image(dir / "a.bmp").format, "bmp");
}

TEST_F(ImageTest, BadFilesAreErrorsNamingTheFileAndProblem) {
  Bytes jpeg = encode_jpeg(pattern(64, 64), 3, 90);
  Bytes png = encode_png(9, 7, PngSpec(), rows_of(pattern(9, 7)));
  Bytes webp = encode_webp_lossless(pattern(40, 40, 4));
  auto expect_error = [&](const std::string& name, const Bytes& bytes, const std::string& problem) {
    fs::path path = file(name, bytes);
    std::string message = error_of([&] { load_image(path); });
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find(problem), std::string::npos) << name << ": " << message;
    return message;
  };
  expect_error("empty.jpg", {}, "empty (0 bytes)");
  expect_error("garbage.png", Bytes(100, 0x42), "not an image file");
  expect_error("anim.gif", {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0}, "GIF images are not supported");
  expect_error("half.jpg", Bytes(jpeg.begin(), jpeg.begin() + jpeg.size() / 2), "truncated JPEG");
  expect_error("noeoi.jpg", Bytes(jpeg.begin(), jpeg.end() - 2), "truncated JPEG");
  expect_error("header.jpg", Bytes(jpeg.begin(), jpeg.begin() + 20), "truncated JPEG");
  expect_error("half.png", Bytes(png.begin(), png.begin() + png.size() / 2), "truncated PNG");
  expect_error("half.webp", Bytes(webp.begin(), webp.begin() + webp.size() / 2), "truncated WebP");
  Bytes bmp = encode_bmp(5, 3, 24, false, std::vector<Bytes>(3, Bytes(15, 1)));
  expect_error("half.bmp", Bytes(bmp.begin(), bmp.end() - 20), "truncated BMP");
  Bytes rle = bmp;
  rle[30] = 1;
  expect_error("rle.bmp", rle, "RLE-compressed BMP is not supported");
  // Corrupt data inside the JPEG entropy stream: a marker where data should be.
  Bytes corrupt = jpeg;
  for (std::size_t i = corrupt.size() / 2; i < corrupt.size() / 2 + 64; ++i) corrupt[i] = 0xFF;
  EXPECT_NE(error_of([&] { load_image(file("corrupt.jpg", corrupt)); }).find("JPEG"), std::string::npos);
  // A PNG claiming 100000 x 100000: refused from its header, before any allocation, by probe and load.
  Bytes huge = png;
  for (int k : {16, 20}) huge[k] = 0, huge[k + 1] = 1, huge[k + 2] = 0x86, huge[k + 3] = 0xA0;
  std::string message = expect_error("huge.png", huge, "larger than the limit of 268,435,456 pixels");
  EXPECT_NE(message.find("100000x100000"), std::string::npos);
  EXPECT_NE(error_of([&] { probe_image(dir / "huge.png"); }).find("limit"), std::string::npos);
  // The IHDR CRC is wrong now, but the size check comes first; a wrong CRC alone is a libpng error.
  Bytes bad_crc = png;
  bad_crc[29] ^= 0xFF;
  expect_error("crc.png", bad_crc, "corrupt or unsupported PNG");
  // Complete image data without the IEND chunk loads (as in Pillow); trailing junk after it too.
  EXPECT_EQ(load_image(file("noend.png", Bytes(png.begin(), png.end() - 12))).width, 9);
  Bytes junk(png.begin(), png.end() - 12);
  junk.insert(junk.end(), 40, 0xEE);
  EXPECT_EQ(load_image(file("junk.png", junk)).width, 9);
  EXPECT_NE(error_of([&] { load_image(dir / "missing.png"); }).find("missing.png"), std::string::npos);
  EXPECT_NE(error_of([&] { load_image(dir); }).find("is a folder"), std::string::npos);
}

TEST_F(ImageTest, ProbeReadsOnlyTheHeader) {
  Bytes jpeg = with_exif(encode_jpeg(pattern(48, 20), 3, 90), 5);
  // A JPEG cut inside its image data still probes (size and orientation come before it) but fails to load.
  fs::path path = file("cut.jpg", Bytes(jpeg.begin(), jpeg.begin() + jpeg.size() - 100));
  ImageInfo info = probe_image(path);
  EXPECT_EQ(info.width, 20);
  EXPECT_EQ(info.height, 48);
  EXPECT_FALSE(info.has_alpha);
  EXPECT_THROW(load_image(path), fluxtrain::Error);
  ImageInfo memory = probe_image_bytes(jpeg, "memory.jpg");
  EXPECT_EQ(memory.width, 20);
}

TEST_F(ImageTest, ResizeAreaLanczosAndAlpha) {
  // Exact area: 3 -> 2 pixels: [0, 90, 180] -> [(0 + 45) / 1.5, (45 + 180) / 1.5] = [30, 150].
  Image row{3, 1, 3, {0, 0, 0, 90, 90, 90, 180, 180, 180}};
  EXPECT_EQ(resize_image(row, 2, 1).pixels, (Bytes{30, 30, 30, 150, 150, 150}));
  // Integer factor: plain averages of 2 x 2 blocks.
  Image block = pattern(4, 2);
  Image half = resize_image(block, 2, 1);
  for (int k = 0; k < 3; ++k) {
    int sum = block.pixels[k] + block.pixels[3 + k] + block.pixels[12 + k] + block.pixels[15 + k];
    EXPECT_EQ(half.pixels[k], (sum + 2) / 4);
  }
  // A flat image stays flat under both filters, on both axes at once.
  Image flat{7, 5, 3, Bytes(7 * 5 * 3, 77)};
  for (auto [w, h] : {std::pair{3, 2}, {20, 13}, {3, 13}, {20, 2}}) {
    Image out = resize_image(flat, w, h);
    EXPECT_EQ(out.width, w);
    EXPECT_EQ(out.pixels, Bytes(std::size_t(w) * h * 3, 77));
  }
  // Premultiplied alpha: fully transparent red pixels lend no red to their opaque green neighbours.
  Image alpha{2, 1, 4, {255, 0, 0, 0, 0, 255, 0, 255}};
  for (auto [w, h] : {std::pair{1, 1}, {9, 3}}) {
    Image out = resize_image(alpha, w, h);
    for (std::size_t i = 0; i < out.pixels.size(); i += 4)
      if (out.pixels[i + 3] > 0) {
        EXPECT_EQ(out.pixels[i], 0) << w;
      }
  }
  EXPECT_EQ(resize_image(alpha, 1, 1).pixels, (Bytes{0, 255, 0, 128}));
  EXPECT_EQ(resize_image(block, 4, 2).pixels, block.pixels);
  EXPECT_THROW(resize_image(block, 0, 2), fluxtrain::Error);
  EXPECT_THROW(resize_image(Image{2, 2, 3, Bytes(3)}, 1, 1), fluxtrain::Error);
}

TEST_F(ImageTest, CropAndFlip) {
  Image image = pattern(5, 4);
  Image crop = crop_image(image, 1, 2, 3, 2);
  EXPECT_EQ(crop.width, 3);
  EXPECT_EQ(Bytes(crop.pixels.begin(), crop.pixels.begin() + 3),
            Bytes(&image.pixels[(2 * 5 + 1) * 3], &image.pixels[(2 * 5 + 2) * 3]));
  EXPECT_EQ(crop_image(image, 0, 0, 5, 4).pixels, image.pixels);
  EXPECT_NE(error_of([&] { crop_image(image, 3, 0, 3, 1); }).find("does not lie inside"), std::string::npos);
  EXPECT_THROW(crop_image(image, -1, 0, 1, 1), fluxtrain::Error);
  Image flipped = flip_horizontal(image);
  EXPECT_EQ(Bytes(flipped.pixels.begin(), flipped.pixels.begin() + 3),
            Bytes(&image.pixels[4 * 3], &image.pixels[5 * 3]));
  EXPECT_EQ(flip_horizontal(flipped).pixels, image.pixels);
}

// An image file over kMaxImageFileBytes is refused before it is read (probe and load), naming the file
// and the cap. The file is sparse: it takes no disk space.
TEST(Image, OversizedImageFileIsRefused) {
  const fs::path root = fluxtrain::testing::fresh_dir("image_cap");
  const fs::path big = root / "huge.png";
  { std::ofstream(big, std::ios::binary) << "\x89PNG\r\n\x1a\n"; }
  fs::resize_file(big, kMaxImageFileBytes + 1);
  for (const auto& call :
       {std::function<void()>([&] { probe_image(big); }), std::function<void()>([&] { load_image(big); })}) {
    fluxtrain::testing::expect_error(call, {big.string(), "over the 512 MiB limit for an image file"});
  }
  fs::remove(big);
}
