#include "sample/sampler.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/log.h"
#include "core/stop.h"
#include "models/flux/flux.h"

namespace fluxtrain::sample {
namespace {

void check_size(int width, int height, const std::string& what) {
  if (width < 16 || height < 16 || width % 16 != 0 || height % 16 != 0) {
    fail(what, ": the image size ", width, "x", height, " is not a positive multiple of 16 in both sides; ",
         "use e.g. --w ", std::max(16, width / 16 * 16), " --h ", std::max(16, height / 16 * 16));
  }
}

at::Tensor forward(models::FluxTransformerImpl& model, const at::Tensor& x, const Conditioning& c, float t,
                   double guidance, at::ScalarType dtype, const at::Tensor& img_ids) {
  const at::Device device = x.device();
  models::FluxInputs in;
  in.img = models::pack_latents(x).to(dtype);
  in.img_ids = img_ids;
  in.txt = c.txt.to(device, dtype);
  in.txt_ids = at::zeros({1, c.txt.size(1), 3}, at::TensorOptions().device(device).dtype(at::kFloat));
  in.timesteps = at::full({1}, t, at::TensorOptions().device(device).dtype(dtype));
  in.y = c.y.to(device, dtype);
  in.guidance = at::full({1}, guidance, at::TensorOptions().device(device).dtype(dtype));
  if (c.txt_mask.defined()) in.txt_mask = c.txt_mask.to(device);
  at::Tensor v = model.forward(in).to(at::kFloat);
  return models::unpack_latents(v, x.size(2), x.size(3));
}

std::string number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6g", value);
  return buffer;
}

}  // namespace

double schedule_mu(int64_t image_tokens) {
  // BFL get_lin_function(x1=256, y1=0.5, x2=4096, y2=1.15), in Python floats (double).
  const double m = (1.15 - 0.5) / (4096.0 - 256.0);
  const double b = 0.5 - m * 256.0;
  return m * static_cast<double>(image_tokens) + b;
}

at::Tensor schedule(int steps, int64_t image_tokens, bool shift) {
  if (steps < 1) fail("sampling steps must be at least 1, got ", steps);
  at::Tensor t = at::linspace(1, 0, steps + 1, at::TensorOptions().dtype(at::kFloat));
  if (!shift) return t;
  // time_shift(mu, 1, t) = e^mu / (e^mu + (1/t - 1)^1), the same fp32 tensor operations as Python's
  // `math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)`; t = 0 gives 1/0 = inf and so 0.
  const double e = std::exp(schedule_mu(image_tokens));
  at::Tensor inner = (t.reciprocal() * 1.0 - 1.0).pow(1.0);
  return (inner + e).reciprocal() * e;
}

at::Tensor initial_noise(int width, int height, uint64_t seed) {
  const int64_t h = 2 * ((height + 15) / 16), w = 2 * ((width + 15) / 16);
  at::Generator generator = at::detail::createCPUGenerator(seed);
  return at::randn({1, 16, h, w}, generator, at::TensorOptions().dtype(at::kFloat));
}

at::Tensor sample_latents(models::FluxTransformerImpl& model, const Conditioning& positive,
                          const Conditioning* negative, const SampleSettings& settings, at::ScalarType compute_dtype) {
  check_size(settings.width, settings.height, "sample");
  const bool cfg = settings.cfg != 1.0;
  if (cfg && (negative == nullptr || !negative->txt.defined())) {
    fail("sample: a CFG scale of ", settings.cfg, " needs the negative prompt's conditioning (none was given)");
  }
  at::NoGradGuard no_grad;
  const at::Device device = model.img_in->weight.device();
  const at::ScalarType dtype =
      compute_dtype == at::ScalarType::Undefined ? model.img_in->weight.scalar_type() : compute_dtype;
  at::Tensor x = initial_noise(settings.width, settings.height, settings.seed).to(device);
  const int64_t h = x.size(2) / 2, w = x.size(3) / 2;
  at::Tensor img_ids = models::make_img_ids(1, h, w, at::TensorOptions().device(device));
  const bool shift = settings.shift.value_or(model.config.guidance_embed);
  at::Tensor t_tensor = schedule(settings.steps, h * w, shift);
  std::vector<float> t(t_tensor.data_ptr<float>(), t_tensor.data_ptr<float>() + t_tensor.numel());
  for (int i = 0; i < settings.steps; ++i) {
    // Between denoising steps: a stop signal abandons the image (nothing is written). It throws even in
    // training, where the trainer catches it and goes on to its state (train/trainer.cpp).
    stop::pause_point("sampling");
    if (stop::requested()) throw stop::Stopped("sampling");
    at::Tensor v = forward(model, x, positive, t[i], settings.guidance, dtype, img_ids);
    if (cfg) {
      at::Tensor v_negative = forward(model, x, *negative, t[i], settings.guidance, dtype, img_ids);
      v = v_negative + settings.cfg * (v - v_negative);  // diffusers FluxPipeline true_cfg_scale
    }
    // BFL denoise: img + (t_prev - t_curr) * pred, the step size in double from the fp32 timesteps.
    x = x + (static_cast<double>(t[i + 1]) - static_cast<double>(t[i])) * v;
  }
  return x;
}

data::Image decode_to_image(models::AutoEncoderImpl& ae, const at::Tensor& latents) {
  at::NoGradGuard no_grad;
  const at::Tensor& p = ae.decoder->conv_in->weight;
  at::Tensor pixels = ae.decode(latents.to(p.device(), p.scalar_type())).to(at::kFloat);
  pixels = ((pixels.clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255).to(at::kByte);
  pixels = pixels[0].permute({1, 2, 0}).contiguous().to(at::kCPU);
  data::Image image;
  image.height = static_cast<int>(pixels.size(0));
  image.width = static_cast<int>(pixels.size(1));
  image.channels = 3;
  image.pixels.assign(pixels.data_ptr<uint8_t>(), pixels.data_ptr<uint8_t>() + pixels.numel());
  return image;
}

Sampler::Sampler(models::AutoEncoder ae, std::vector<SamplePrompt> prompts, const TextEncodeFn& encode,
                 SamplerOptions options)
    : ae_(std::move(ae)), prompts_(std::move(prompts)), options_(std::move(options)) {
  for (const auto& p : prompts_) {
    check_size(p.width, p.height, p.origin.empty() ? "sample prompt" : p.origin);
    if (p.steps < 1) fail(p.origin, ": sampling steps must be at least 1, got ", p.steps);
  }
  encode_prompts(encode);
}

void Sampler::encode_prompts(const TextEncodeFn& encode) {
  std::vector<std::string> texts;
  std::vector<size_t> negative_slot(prompts_.size(), SIZE_MAX);
  for (const auto& p : prompts_) texts.push_back(p.prompt);
  for (size_t i = 0; i < prompts_.size(); ++i) {
    if (prompts_[i].cfg != 1.0) {
      negative_slot[i] = texts.size();
      texts.push_back(prompts_[i].negative);
    }
  }
  if (texts.empty()) return;
  std::vector<Conditioning> encoded = encode(texts);
  TORCH_CHECK(encoded.size() == texts.size(), "text encoder returned ", encoded.size(), " embeddings for ",
              texts.size());
  auto to_cpu = [](Conditioning c) {
    Conditioning out;
    out.txt = c.txt.to(at::kCPU);
    out.y = c.y.to(at::kCPU);
    if (c.txt_mask.defined()) out.txt_mask = c.txt_mask.to(at::kCPU);
    return out;
  };
  positive_.clear();
  negative_.clear();
  for (size_t i = 0; i < prompts_.size(); ++i) {
    positive_.push_back(to_cpu(encoded[i]));
    negative_.push_back(negative_slot[i] == SIZE_MAX ? Conditioning{} : to_cpu(encoded[negative_slot[i]]));
  }
}

SampleSettings Sampler::settings(size_t index) const {
  const SamplePrompt& p = prompts_.at(index);
  SampleSettings s;
  s.width = p.width;
  s.height = p.height;
  s.steps = p.steps;
  s.guidance = p.guidance;
  s.cfg = p.cfg;
  s.seed = sample_seed(p, options_.run_seed, index);
  s.negative = p.negative;
  s.shift = options_.shift;
  return s;
}

std::vector<std::filesystem::path> Sampler::render(int64_t step, models::FluxTransformerImpl& model) {
  std::vector<std::filesystem::path> written;
  if (prompts_.empty()) return written;
  std::filesystem::create_directories(options_.out_dir);
  for (size_t i = 0; i < prompts_.size(); ++i) {
    const SampleSettings s = settings(i);
    at::Tensor latents = sample_latents(model, positive_[i], s.cfg != 1.0 ? &negative_[i] : nullptr, s);
    data::Image image = decode_to_image(*ae_, latents);
    char index[64];
    std::snprintf(index, sizeof index, "_%06lld_%02zu_", static_cast<long long>(step), i);
    std::filesystem::path path = options_.out_dir / (options_.name + index + std::to_string(s.seed) + ".png");
    // The prompt's text is the PNG's standard "Description"; "prompt" is ComfyUI's (its API graph).
    std::vector<std::pair<std::string, std::string>> text = {
        {"Description", prompts_[i].prompt}, {"negative", s.negative},           {"seed", std::to_string(s.seed)},
        {"steps", std::to_string(s.steps)},  {"guidance", number(s.guidance)},   {"cfg", number(s.cfg)},
        {"step", std::to_string(step)},      {"width", std::to_string(s.width)}, {"height", std::to_string(s.height)}};
    for (const auto& item : options_.text) text.push_back(item);
    if (options_.comfy) {
      ComfyGraph graph = *options_.comfy;
      if (options_.comfy_loras) graph.loras = options_.comfy_loras(step);
      graph.prompt = prompts_[i].prompt;
      graph.negative = s.negative;
      graph.seed = s.seed;
      graph.steps = s.steps;
      graph.guidance = s.guidance;
      graph.cfg = s.cfg;
      graph.width = s.width;
      graph.height = s.height;
      graph.shift = s.shift.value_or(model.config.guidance_embed);
      // ASCII JSON (non-ASCII as \u escapes): a tEXt chunk, which every PNG reader and ComfyUI read.
      text.emplace_back("prompt", comfyui_api_prompt(graph).dump(-1, ' ', true));
    }
    data::save_png(path, image, text);
    log::info("sample ", i + 1, "/", prompts_.size(), " (step ", step, "): ", path.string());
    written.push_back(path);
  }
  return written;
}

}  // namespace fluxtrain::sample
