// Separable resampling: per axis, an exact area filter when shrinking and Lanczos-3 when growing.
//
// Area: output pixel x covers [x * s, (x + 1) * s) of the input (s = in / out); each input pixel is
// weighted by the length of its overlap, divided by s (OpenCV's INTER_AREA; for integer factors it is
// PIL's Image.reduce). PIL's Image.BOX differs for fractional factors: it weights whole pixels by
// whether their centre lies inside the footprint.
// Lanczos: PIL's LANCZOS for upscaling (support 3, centre (x + 0.5) * s, taps clipped at the borders
// and renormalised). Like PIL, the horizontal pass runs first and its overshoot is clamped to [0, 255]
// (PIL stores it as 8-bit; we keep the float unrounded): without that clamp, noisy images differ from PIL
// by up to 40 levels.
// RGBA is resampled premultiplied (as PIL does), so transparent pixels' colours do not bleed.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "data/image.h"

namespace fluxtrain::data {
namespace {

// For each output pixel: the first input pixel and `taps` weights (zero-padded).
struct AxisWeights {
  int taps = 1;
  std::vector<int> first;
  std::vector<float> weights;
};

AxisWeights area_weights(int in, int out) {
  const double scale = double(in) / out;
  AxisWeights axis;
  axis.taps = static_cast<int>(std::ceil(scale)) + 1;
  axis.first.resize(out);
  axis.weights.assign(std::size_t(out) * axis.taps, 0.0f);
  for (int x = 0; x < out; ++x) {
    double lo = x * scale, hi = std::min<double>((x + 1) * scale, in);
    int first = static_cast<int>(std::floor(lo));
    axis.first[x] = first;
    for (int t = 0; t < axis.taps && first + t < in; ++t) {
      double overlap = std::min<double>(first + t + 1, hi) - std::max<double>(first + t, lo);
      if (overlap > 0) axis.weights[std::size_t(x) * axis.taps + t] = static_cast<float>(overlap / scale);
    }
  }
  return axis;
}

double lanczos3(double x) {
  auto sinc = [](double v) { return v == 0 ? 1.0 : std::sin(std::numbers::pi * v) / (std::numbers::pi * v); };
  return x > -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
}

AxisWeights lanczos_weights(int in, int out) {
  const double scale = double(in) / out, support = 3.0;
  AxisWeights axis;
  axis.taps = 7;
  axis.first.resize(out);
  axis.weights.assign(std::size_t(out) * axis.taps, 0.0f);
  for (int x = 0; x < out; ++x) {
    double center = (x + 0.5) * scale;
    int first = std::max(0, static_cast<int>(center - support + 0.5));
    int end = std::min(in, static_cast<int>(center + support + 0.5));
    end = std::min(end, first + axis.taps);
    double sum = 0;
    for (int i = first; i < end; ++i) sum += lanczos3(i - center + 0.5);
    axis.first[x] = first;
    for (int i = first; i < end; ++i)
      axis.weights[std::size_t(x) * axis.taps + (i - first)] = static_cast<float>(lanczos3(i - center + 0.5) / sum);
  }
  return axis;
}

AxisWeights axis_weights(int in, int out) {
  if (in == out) {
    AxisWeights identity;
    identity.first.resize(out);
    for (int x = 0; x < out; ++x) identity.first[x] = x;
    identity.weights.assign(out, 1.0f);
    return identity;
  }
  return in > out ? area_weights(in, out) : lanczos_weights(in, out);
}

// Horizontal pass into a float buffer of image.height rows, premultiplying on the way in and clamping
// on the way out. C (3 or 4) is a template argument so that the channel loops unroll.
template <int C>
void horizontal_pass(const Image& image, const AxisWeights& horizontal, int width, std::vector<float>& between) {
  std::vector<float> row(std::size_t(image.width) * C);
  for (int y = 0; y < image.height; ++y) {
    const std::uint8_t* src = &image.pixels[std::size_t(y) * image.width * C];
    for (int x = 0; x < image.width; ++x) {
      float a = C == 4 ? src[x * C + 3] / 255.0f : 1.0f;
      for (int k = 0; k < 3; ++k) row[x * C + k] = src[x * C + k] * a;
      if constexpr (C == 4) row[x * C + 3] = src[x * C + 3];
    }
    float* dst = &between[std::size_t(y) * width * C];
    for (int x = 0; x < width; ++x) {
      const float* w = &horizontal.weights[std::size_t(x) * horizontal.taps];
      const int first = horizontal.first[x], taps = std::min(horizontal.taps, image.width - first);
      const float* in = &row[std::size_t(first) * C];
      float sum[C] = {};
      for (int t = 0; t < taps; ++t)
        for (int k = 0; k < C; ++k) sum[k] += w[t] * in[t * C + k];
      for (int k = 0; k < C; ++k) dst[x * C + k] = std::clamp(sum[k], 0.0f, 255.0f);
    }
  }
}

}  // namespace

Image resize_image(const Image& image, int width, int height) {
  const int c = image.channels;
  if ((c != 3 && c != 4) || image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != std::size_t(image.width) * image.height * c)
    fail("resize_image: invalid input image ", image.width, "x", image.height, "x", c, " with ", image.pixels.size(),
         " bytes");
  if (width <= 0 || height <= 0 || std::uint64_t(width) * std::uint64_t(height) > kMaxImagePixels)
    fail("resize_image: invalid target size ", width, "x", height, " (expected positive and at most ", kMaxImagePixels,
         " pixels)");
  if (width == image.width && height == image.height) return image;
  const AxisWeights horizontal = axis_weights(image.width, width), vertical = axis_weights(image.height, height);
  const bool alpha = c == 4;

  std::vector<float> between(std::size_t(image.height) * width * c);
  if (alpha)
    horizontal_pass<4>(image, horizontal, width, between);
  else
    horizontal_pass<3>(image, horizontal, width, between);

  // Vertical pass, then unpremultiply, round to nearest and clamp.
  Image out{width, height, c, std::vector<std::uint8_t>(std::size_t(width) * height * c)};
  std::vector<float> sum(std::size_t(width) * c);
  auto to_byte = [](float v) { return static_cast<std::uint8_t>(std::clamp(v, 0.0f, 255.0f) + 0.5f); };
  for (int y = 0; y < height; ++y) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    const float* w = &vertical.weights[std::size_t(y) * vertical.taps];
    const int first = vertical.first[y], taps = std::min(vertical.taps, image.height - first);
    for (int t = 0; t < taps; ++t) {
      if (w[t] == 0) continue;
      const float* src = &between[std::size_t(first + t) * width * c];
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += w[t] * src[i];
    }
    std::uint8_t* dst = &out.pixels[std::size_t(y) * width * c];
    for (int x = 0; x < width; ++x) {
      const float* s = &sum[std::size_t(x) * c];
      if (!alpha) {
        for (int k = 0; k < 3; ++k) dst[x * c + k] = to_byte(s[k]);
        continue;
      }
      float a = std::clamp(s[3], 0.0f, 255.0f);
      dst[x * c + 3] = to_byte(a);
      for (int k = 0; k < 3; ++k) dst[x * c + k] = a > 0 ? to_byte(s[k] * 255.0f / a) : 0;
    }
  }
  return out;
}

}  // namespace fluxtrain::data
