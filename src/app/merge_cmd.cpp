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
#include "app/tool_options.h"
#include "core/error.h"
#include "core/log.h"
#include "lora/lora_file.h"
#include "lora/merge.h"

namespace fluxtrain::app {
namespace {

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

int run_merge(const MergeSettings& o) {
  const bool bake = !o.base.empty();
  std::vector<lora::WeightedLora> loras;
  for (const auto& text : o.loras) loras.push_back(parse_weighted(text, bake ? "STRENGTH" : "WEIGHT"));
  if (bake) {
    lora::BakeOptions options;
    if (!o.dtype.empty()) options.dtype = lora::parse_weight_dtype(o.dtype, "--dtype");
    auto report = lora::bake_loras(o.base, loras, o.out, options);
    log::info("baked ", report.modules, " LoRA modules into ", report.tensors, " of the ", report.written,
              " tensors of ", o.base, ": wrote ", o.out);
    return 0;
  }
  lora::MergeOptions options;
  options.rank = o.rank.value_or(0);
  options.title = o.title;
  options.created_at = o.engine.source_date_epoch;
  if (!o.dtype.empty()) options.dtype = lora::parse_weight_dtype(o.dtype, "--dtype");
  auto report = lora::merge_loras(loras, options, o.out);
  std::string ranks =
      report.min_rank == report.max_rank ? std::to_string(report.max_rank) : cat(report.min_rank, "-", report.max_rank);
  log::info("merged ", loras.size(), " LoRAs: ", report.modules, " modules, rank ", ranks,
            options.rank > 0
                ? cat(" (SVD; kept ", percent(report.total_kept), " of ‖ΔW‖², worst module ",
                      report.worst_module.empty() ? "-" : report.worst_module, " ", percent(report.worst_kept), ")")
                : std::string(" (exact)"),
            ": wrote ", o.out);
  return 0;
}

}  // namespace

Command add_merge_command(CLI::App& app) {
  return add_table_command(app, command_info("merge"),
                           [](const ResolvedConfig& config) { return run_merge(config.bind<MergeSettings>()); });
}

}  // namespace fluxtrain::app
