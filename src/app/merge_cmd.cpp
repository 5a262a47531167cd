// `fluxtrain merge`: weighted merge of LoRAs, or LoRAs baked into a base checkpoint (lora/merge.h).
//   fluxtrain merge --lora A.safetensors[:W] --lora B.safetensors[:W] [--rank R] --out merged.safetensors
//   fluxtrain merge --base flux1-dev.safetensors --lora A.safetensors[:S] ... --out baked.safetensors
//                   [--dtype bf16|fp16|fp32|fp8]
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "app/commands.h"
#include "app/environment_knobs.h"
#include "core/error.h"
#include "core/log.h"
#include "lora/lora_file.h"
#include "lora/merge.h"

namespace fluxtrain::app {
namespace {

struct MergeCliOptions {
  std::vector<std::string> loras;
  std::string base;
  std::string out;
  int64_t rank = 0;
  bool rank_given = false;
  std::string dtype;
  std::string title;
};

// "FILE" or "FILE:NUMBER". The number is taken only when what follows the last ':' is one, so paths with
// ':' still work; "FILE:abc" for a FILE that does not exist as written is an error naming both readings.
lora::WeightedLora parse_weighted(const std::string& text, const std::string& what) {
  lora::WeightedLora out{text, 1.0};
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size()) return out;
  const std::string number = text.substr(colon + 1);
  std::error_code ec;
  try {
    size_t used = 0;
    double value = std::stod(number, &used);
    if (used == number.size()) {
      if (!std::isfinite(value)) fail("--lora ", text, ": the ", what, " '", number, "' is not a finite number");
      return {text.substr(0, colon), value};
    }
  } catch (const std::logic_error&) {
  }
  if (std::filesystem::exists(text, ec)) return out;
  fail("--lora ", text, ": '", number, "' after the last ':' is not a number (expected FILE or FILE:", what,
       ", e.g. style.safetensors:0.8)");
}

std::string percent(double share) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f%%", share * 100);
  return text;
}

}  // namespace

Command add_merge_command(CLI::App& app) {
  auto o = std::make_shared<MergeCliOptions>();
  CLI::App* sub = app.add_subcommand(
      "merge", "Merge LoRAs into one (exact, or SVD to a rank), or bake LoRAs into a base checkpoint");
  sub->add_option("--lora", o->loras,
                  "LoRA file, optionally with a weight (merge) or strength (bake): FILE or FILE:W; repeat for "
                  "several")
      ->required();
  sub->add_option("--base", o->base, "bake the LoRAs into this base checkpoint (BFL single file, bf16/fp16/fp32/fp8)");
  sub->add_option("--out", o->out, "output .safetensors file (replaced atomically if it exists)")->required();
  auto* rank = sub->add_option("--rank", o->rank,
                               "LoRA merge: SVD to this rank (best rank-R approximation); without it the merge is "
                               "exact, with the summed ranks");
  sub->add_option("--dtype", o->dtype,
                  "weight dtype of the output: LoRA merge fp32 (default), bf16, fp16; bake: keep each tensor's "
                  "(default), bf16, fp16, fp32 or fp8");
  sub->add_option("--title", o->title, "LoRA merge: modelspec.title / ss_output_name of the result");
  return {sub, [o, rank] {
            o->rank_given = rank->count() > 0;
            if (o->rank_given && o->rank <= 0) {
              fail("--rank must be a positive rank, got ", o->rank, " (leave it out for an exact merge)");
            }
            const bool bake = !o->base.empty();
            std::vector<lora::WeightedLora> loras;
            for (const auto& text : o->loras) loras.push_back(parse_weighted(text, bake ? "STRENGTH" : "WEIGHT"));
            if (bake) {
              if (o->rank_given) fail("--rank applies to LoRA merges; baking into --base ", o->base, " has no rank");
              if (!o->title.empty())
                fail("--title applies to LoRA merges; a baked checkpoint keeps the base's metadata");
              lora::BakeOptions options;
              if (!o->dtype.empty()) options.dtype = lora::parse_weight_dtype(o->dtype, "--dtype");
              auto report = lora::bake_loras(o->base, loras, o->out, options);
              log::info("baked ", report.modules, " LoRA modules into ", report.tensors, " of the ", report.written,
                        " tensors of ", o->base, ": wrote ", o->out);
              return 0;
            }
            lora::MergeOptions options;
            options.rank = o->rank_given ? o->rank : 0;
            options.title = o->title;
            if (!o->dtype.empty()) options.dtype = lora::parse_weight_dtype(o->dtype, "--dtype");
            lora::set_default_creation_time(source_date_epoch());  // the merged file's modelspec.date
            auto report = lora::merge_loras(loras, options, o->out);
            std::string ranks = report.min_rank == report.max_rank ? std::to_string(report.max_rank)
                                                                   : cat(report.min_rank, "-", report.max_rank);
            log::info("merged ", loras.size(), " LoRAs: ", report.modules, " modules, rank ", ranks,
                      options.rank > 0 ? cat(" (SVD; kept ", percent(report.total_kept), " of ‖ΔW‖², worst module ",
                                             report.worst_module.empty() ? "-" : report.worst_module, " ",
                                             percent(report.worst_kept), ")")
                                       : std::string(" (exact)"),
                      ": wrote ", o->out);
            return 0;
          }};
}

}  // namespace fluxtrain::app
