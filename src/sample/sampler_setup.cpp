#include "sample/sampler_setup.h"

#include "core/log.h"
#include "lora/text_encoder_network.h"
#include "models/convert.h"

namespace fluxtrain::sample {

TextEncodeFn text_encode_fn(TextEncoders& encoders) {
  return [&encoders](const std::vector<std::string>& texts) {
    std::vector<Conditioning> out;
    for (const std::string& text : texts) {
      TextEmbeddings e = encoders.encode({text});
      Conditioning c;
      c.txt = e.t5;
      c.y = e.clip_pooled;
      if (encoders.options().t5_attn_mask) c.txt_mask = e.t5_mask;
      out.push_back(std::move(c));
    }
    return out;
  };
}

std::unique_ptr<Sampler> make_sampler(const SamplerSetup& setup) {
  models::LoadedAe ae = models::load_ae(setup.ae_path, setup.options);
  models::ModelOptions encoder_options = setup.options;
  auto encoders = std::make_unique<TextEncoders>(setup.clip_path, setup.t5_path, encoder_options, setup.text);
  for (const auto& [path, strength] : setup.text_encoder_loras) {
    const lora::TextEncoderMergeReport merged =
        lora::merge_text_encoder_lora(path, &encoders->clip(), &encoders->t5(), strength);
    if (merged.clip_modules + merged.t5_modules > 0)
      log::info("LoRA ", path, ": ", merged.clip_modules, " CLIP-L and ", merged.t5_modules,
                " T5 modules merged into the text encoders at strength ", strength);
  }
  auto sampler = std::make_unique<Sampler>(ae.model, setup.prompts, text_encode_fn(*encoders), setup.sampler);
  encoders.reset();  // the embeddings are kept; the encoders are not needed any more
  return sampler;
}

}  // namespace fluxtrain::sample
