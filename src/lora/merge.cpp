#include "lora/merge.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "core/version.h"
#include "lora/keys.h"
#include "lora/lora_file.h"
#include "lora/lycoris.h"
#include "models/convert.h"

namespace fluxtrain::lora {
namespace {

namespace fs = std::filesystem;
using safetensors::Dtype;
using safetensors::TensorInfo;

constexpr double kE4M3Max = 448.0;

std::string shape_text(int64_t a, int64_t b) {
  return cat("[", a, ", ", b, "]");
}

bool is_float(Dtype d) {
  return d == Dtype::F64 || d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F8_E4M3 ||
         d == Dtype::F8_E5M2;
}

// One module of a LoRA file: ΔW = scale · up @ down.
struct ModuleEntry {
  const TensorInfo* down = nullptr;
  const TensorInfo* up = nullptr;
  int64_t rank = 0, in = 0, out = 0;
  double scale = 1.0;  // alpha / rank
};

// A kohya-format LoRA file, memory-mapped, with its modules checked.
struct LoraFile {
  std::string path;
  double weight = 1.0;
  std::unique_ptr<safetensors::Reader> reader;
  std::map<std::string, ModuleEntry> modules;
  // LyCORIS modules (LoKr, LoHa, DoRA: lora/lycoris.h), every part of each; bake applies them, merge refuses.
  std::map<std::string, std::map<keys::Part, const TensorInfo*>> lycoris;

  at::Tensor load(const TensorInfo* info, at::ScalarType type) const { return reader->tensor(*info).to(type); }
  std::string meta(const std::string& key) const {
    auto it = reader->metadata().find(key);
    return it == reader->metadata().end() ? std::string() : it->second;
  }
};

// Why a file is not a plain kohya LoRA, from its tensor names ("" when nothing recognisable).
std::string foreign_format_hint(const std::vector<std::string>& names) {
  for (const auto& n : names) {
    if (auto parsed = keys::parse(n); parsed && parsed->spelling != keys::Spelling::kohya) {
      return cat("it is a PEFT / diffusers-format LoRA (", keys::part_label(keys::Part::down), " / ",
                 keys::part_label(keys::Part::up), "); convert it to kohya format first");
    }
    if (auto parsed = keys::parse(n); parsed && !keys::lycoris_type(parsed->part).empty()) {
      return cat("it is a LyCORIS ", keys::lycoris_type(parsed->part), " network (", keys::part_label(parsed->part),
                 ")");
    }
    if (auto adapter = keys::unsupported_adapter(n)) {
      return cat("it is a ", adapter->name, " (", adapter->marker, "), which cannot be merged as a plain LoRA");
    }
  }
  for (const auto& n : names) {
    if (n.find("double_blocks.") != std::string::npos || n.find("single_blocks.") != std::string::npos) {
      return "it looks like a model checkpoint; to bake LoRAs into it, pass it with --base";
    }
  }
  return "";
}

LoraFile open_lora(const WeightedLora& input) {
  if (!std::isfinite(input.weight)) fail(input.path, ": the weight ", input.weight, " is not a finite number");
  std::error_code ec;
  if (!fs::exists(input.path, ec)) fail("LoRA ", input.path, " does not exist (check the path)");
  LoraFile file;
  file.path = input.path;
  file.weight = input.weight;
  file.reader = std::make_unique<safetensors::Reader>(input.path);
  const auto& tensors = file.reader->header().tensors;

  std::vector<std::string> names, unknown;
  std::map<std::string, const TensorInfo*> alphas;
  for (const TensorInfo& info : tensors) {
    names.push_back(info.name);
    const auto parsed = keys::parse(info.name);
    if (!parsed || parsed->spelling != keys::Spelling::kohya) {
      unknown.push_back(info.name);
    } else if (!keys::lycoris_type(parsed->part).empty()) {
      file.lycoris[parsed->module][parsed->part] = &info;
    } else if (parsed->part == keys::Part::down) {
      file.modules[parsed->module].down = &info;
    } else if (parsed->part == keys::Part::up) {
      file.modules[parsed->module].up = &info;
    } else {
      alphas[parsed->module] = &info;
    }
  }
  // A LyCORIS module's down/up (DoRA on LoRA) and alpha belong to it.
  for (auto& [name, parts] : file.lycoris) {
    if (auto m = file.modules.find(name); m != file.modules.end()) {
      if (m->second.down) parts[keys::Part::down] = m->second.down;
      if (m->second.up) parts[keys::Part::up] = m->second.up;
      file.modules.erase(m);
    }
    if (auto a = alphas.find(name); a != alphas.end()) {
      parts[keys::Part::alpha] = a->second;
      alphas.erase(a);
    }
    for (const auto& [part, info] : parts) {
      if (!is_float(info->dtype))
        fail(input.path, ": '", info->name, "' has dtype ", safetensors::dtype_name(info->dtype),
             ", expected a float type");
    }
  }
  std::string hint = foreign_format_hint(names);
  if (file.modules.empty() && file.lycoris.empty()) {
    fail(input.path, ": not a kohya-format LoRA: no '*", keys::kDown, "' tensors among its ", tensors.size(),
         " tensors", names.empty() ? "" : " (e.g. '" + names.front() + "')", hint.empty() ? "" : "; " + hint);
  }
  if (!unknown.empty()) {
    fail(input.path, ": ", unknown.size(), " tensors are not part of a plain LoRA (down/up/alpha), e.g. '",
         unknown.front(), "'", hint.empty() ? "; only plain kohya-format LoRAs can be merged" : "; " + hint);
  }
  for (const auto& [name, alpha] : alphas) {
    if (!file.modules.count(name)) {
      fail(input.path, ": '", keys::tensor_key(name, keys::Part::alpha), "' has no ", keys::kDown, " / ", keys::kUp,
           " weights");
    }
  }
  for (auto& [name, m] : file.modules) {
    if (m.down == nullptr || m.up == nullptr) {
      fail(input.path, ": module ", name, " has ", keys::tensor_key(name, m.down ? keys::Part::down : keys::Part::up),
           " but no ", keys::tensor_key(name, m.down ? keys::Part::up : keys::Part::down),
           " (incomplete or damaged file)");
    }
    for (const TensorInfo* t : {m.down, m.up}) {
      if (!is_float(t->dtype))
        fail(input.path, ": '", t->name, "' has dtype ", safetensors::dtype_name(t->dtype), ", expected a float type");
    }
    const auto& d = m.down->shape;
    const auto& u = m.up->shape;
    if (d.size() != 2 || u.size() != 2) {
      fail(input.path, ": module ", name, " has down ", at::IntArrayRef(d), " / up ", at::IntArrayRef(u),
           "; only Linear LoRAs (2-D down [rank, in] and up [out, rank]) can be merged");
    }
    if (d[0] != u[1] || d[0] <= 0) {
      fail(input.path, ": module ", name, " has down ", at::IntArrayRef(d), " but up ", at::IntArrayRef(u),
           ": their ranks (down rows, up columns) must agree and be positive");
    }
    m.rank = d[0];
    m.in = d[1];
    m.out = u[0];
    double alpha = static_cast<double>(m.rank);
    if (auto it = alphas.find(name); it != alphas.end()) {
      if (it->second->numel() != 1) {
        fail(input.path, ": '", it->second->name, "' should hold one number, got shape ",
             at::IntArrayRef(it->second->shape));
      }
      double value = file.reader->tensor(*it->second).to(at::kDouble).item<double>();
      if (!std::isfinite(value)) fail(input.path, ": '", it->second->name, "' is ", value, ", expected a finite alpha");
      if (value != 0) alpha = value;  // kohya: alpha 0 (or missing) means alpha = rank
    }
    m.scale = alpha / static_cast<double>(m.rank);
  }
  return file;
}

std::string significant(double value, int digits) {
  std::ostringstream out;
  out.precision(digits);
  out << value;
  return out.str();
}

// The value all files agree on for a metadata key, "" if none has it; `conflict` is set when they differ.
std::string common_meta(const std::vector<LoraFile>& files, const std::string& key, bool* conflict) {
  std::string value;
  for (const auto& f : files) {
    std::string v = f.meta(key);
    if (v.empty()) continue;
    if (!value.empty() && v != value) {
      if (conflict != nullptr) *conflict = true;
      return "";
    }
    value = v;
  }
  return value;
}

// kohya's own record of a file's rank, else the module ranks ("4" or "4-16").
std::string rank_text(const LoraFile& f) {
  std::string dim = f.meta("ss_network_dim");
  if (!dim.empty()) return dim;
  int64_t lo = INT64_MAX, hi = 0;
  for (const auto& [name, m] : f.modules) {
    lo = std::min(lo, m.rank);
    hi = std::max(hi, m.rank);
  }
  return lo == hi ? std::to_string(lo) : cat(lo, "-", hi);
}

struct MergedModule {
  at::Tensor down, up;  // float64
  double kept = 1.0, energy = 0;
};

MergedModule concat_module(const std::vector<std::pair<const LoraFile*, const ModuleEntry*>>& parts) {
  std::vector<at::Tensor> downs, ups;
  for (const auto& [file, m] : parts) {
    downs.push_back(file->load(m->down, at::kDouble) * (file->weight * m->scale));
    ups.push_back(file->load(m->up, at::kDouble));
  }
  return {at::cat(downs, 0), at::cat(ups, 1)};
}

// Best rank-`rank` approximation of A @ B (A = cat(w·s·up) [out, K], B = cat(down) [K, in]) without forming
// it: A = Qa Ra, Bᵀ = Qb Rb, so A B = Qa (Ra Rbᵀ) Qbᵀ, and the SVD of the small Ra Rbᵀ = U S Vᵀ gives
// A B = (Qa U) S (Qb V)ᵀ.
MergedModule svd_module(const std::vector<std::pair<const LoraFile*, const ModuleEntry*>>& parts, int64_t rank) {
  MergedModule merged = concat_module(parts);
  at::Tensor a = merged.up, b = merged.down;
  auto [qa, ra] = at::linalg_qr(a);
  auto [qb, rb] = at::linalg_qr(b.t());
  auto [u, s, vh] = at::linalg_svd(at::matmul(ra, rb.t()), /*full_matrices=*/false);
  const int64_t r = std::min<int64_t>(rank, s.size(0));
  at::Tensor root = s.narrow(0, 0, r).sqrt();
  merged.up = at::matmul(qa, u.narrow(1, 0, r)) * root.unsqueeze(0);
  merged.down = at::matmul(vh.narrow(0, 0, r), qb.t()) * root.unsqueeze(1);
  at::Tensor s2 = s * s;
  merged.energy = s2.sum().item<double>();
  merged.kept = merged.energy > 0 ? s2.narrow(0, 0, r).sum().item<double>() / merged.energy : 1.0;
  return merged;
}

void check_output_is_not_an_input(const std::string& out, const std::vector<std::string>& inputs) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  if (fs::is_directory(out, ec))
    fail("--out ", out, " is a folder; give a file name such as ", (fs::path(out) / "merged.safetensors").string());
  for (const auto& in : inputs) {
    if (fs::equivalent(out, in, ec)) fail("--out ", out, " is one of the inputs; write the result to a new file");
  }
}

}  // namespace

safetensors::Dtype parse_weight_dtype(const std::string& text, const std::string& option) {
  const std::string t = lower(text);
  if (t == "fp32" || t == "float32" || t == "f32") return Dtype::F32;
  if (t == "fp16" || t == "float16" || t == "f16" || t == "half") return Dtype::F16;
  if (t == "bf16" || t == "bfloat16") return Dtype::BF16;
  if (t == "fp8" || t == "fp8_e4m3fn" || t == "float8_e4m3fn" || t == "f8_e4m3") return Dtype::F8_E4M3;
  fail(option, ": '", text, "' is not a weight dtype; expected fp32, bf16, fp16 or fp8");
}

MergeReport merge_loras(const std::vector<WeightedLora>& inputs, const MergeOptions& options, const std::string& out) {
  if (inputs.empty()) fail("merge: no LoRA given; pass --lora FILE[:WEIGHT] at least once");
  if (options.rank < 0) fail("--rank must be a positive rank, got ", options.rank);
  if (options.dtype != Dtype::F32 && options.dtype != Dtype::F16 && options.dtype != Dtype::BF16) {
    fail("--dtype ", safetensors::dtype_name(options.dtype), " is not available for a LoRA; use fp32, bf16 or fp16");
  }
  std::vector<std::string> paths;
  for (const auto& i : inputs) paths.push_back(i.path);
  check_output_is_not_an_input(out, paths);

  std::vector<LoraFile> files;
  for (const auto& input : inputs) files.push_back(open_lora(input));
  for (const auto& f : files) {
    if (f.lycoris.empty()) continue;
    const auto& [name, parts] = *f.lycoris.begin();
    fail(f.path, ": is a LyCORIS network (", name, " has ", parts.rbegin()->second->name,
         "); merging LoRA files combines plain LoRAs' low-rank factors, which LoKr, LoHa and DoRA files do not "
         "have (nor is their sum one of them). Fix: bake it into a base checkpoint instead (merge --base BASE "
         "--lora FILE), or merge plain LoRAs only");
  }

  // Module -> the files that hold it; every file's ΔW must have the same [out, in].
  std::map<std::string, std::vector<std::pair<const LoraFile*, const ModuleEntry*>>> modules;
  for (const auto& f : files) {
    for (const auto& [name, m] : f.modules) {
      auto& parts = modules[name];
      if (!parts.empty()) {
        const auto& [first_file, first] = parts.front();
        if (first->out != m.out || first->in != m.in) {
          fail("module ", name, ": ", first_file->path, " has ΔW ", shape_text(first->out, first->in), " but ", f.path,
               " has ", shape_text(m.out, m.in), "; the LoRAs were trained on different models and cannot be merged");
        }
      }
      parts.emplace_back(&f, &m);
    }
  }
  for (const auto& f : files) {
    if (f.modules.size() != modules.size()) {
      log::info(f.path, " has ", f.modules.size(), " of the ", modules.size(),
                " modules; where a module is missing it contributes nothing");
    }
  }

  const bool svd = options.rank > 0;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  MergeReport report;
  report.min_rank = INT64_MAX;
  double energy = 0, kept_energy = 0;
  {
    ProgressOptions counting;
    counting.unit = "modules";
    Progress progress(svd ? "SVD merge" : "merging", static_cast<int64_t>(modules.size()), counting);
    for (const auto& [name, parts] : modules) {
      MergedModule m = svd ? svd_module(parts, options.rank) : concat_module(parts);
      const int64_t rank = m.down.size(0);
      if (svd) {
        energy += m.energy;
        kept_energy += m.kept * m.energy;
        if (m.kept < report.worst_kept) {
          report.worst_kept = m.kept;
          report.worst_module = name;
        }
      }
      report.min_rank = std::min(report.min_rank, rank);
      report.max_rank = std::max(report.max_rank, rank);
      const auto type = safetensors::to_scalar_type(options.dtype);
      // alpha = rank: the loaders' scale alpha / rank is 1, and the weights carry ΔW as it is.
      tensors.emplace_back(keys::tensor_key(name, keys::Part::alpha),
                           at::scalar_tensor(static_cast<double>(rank), at::kFloat));
      tensors.emplace_back(keys::tensor_key(name, keys::Part::down), m.down.to(type).contiguous());
      tensors.emplace_back(keys::tensor_key(name, keys::Part::up), m.up.to(type).contiguous());
      progress.advance();
    }
  }
  report.modules = modules.size();
  report.total_kept = energy > 0 ? kept_energy / energy : 1.0;
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  // Metadata: what kohya's merge/resize scripts and the LoRA pages of A1111/Forge/Civitai read.
  safetensors::Metadata meta;
  const bool uniform = report.min_rank == report.max_rank;
  meta["ss_network_module"] = "networks.lora_flux";
  meta["ss_network_dim"] = uniform ? std::to_string(report.max_rank) : "Dynamic";
  meta["ss_network_alpha"] = uniform ? std::to_string(report.max_rank) : "Dynamic";
  bool conflict = false;
  std::string architecture = common_meta(files, "modelspec.architecture", &conflict);
  if (conflict) {
    log::warn(
        "the LoRAs were trained for different base models (modelspec.architecture differs); the merge is "
        "labelled flux-1-dev/lora");
  }
  if (architecture.empty()) architecture = "flux-1-dev/lora";
  meta["modelspec.architecture"] = architecture;
  meta["ss_base_model_version"] = architecture.rfind("flux-1-schnell", 0) == 0 ? "flux1_schnell" : "flux1";
  meta["ss_v2"] = "False";
  const std::string title = options.title.empty() ? "merged LoRA" : options.title;
  meta["ss_output_name"] = title;
  meta["ss_training_comment"] = cat("merged by fluxtrain ", kVersion);
  meta["modelspec.sai_model_spec"] = "1.0.1";
  meta["modelspec.implementation"] = "https://github.com/black-forest-labs/flux";
  meta["modelspec.implementation_version"] = cat("fluxtrain/", kVersion);
  meta["modelspec.title"] = title;
  meta["modelspec.date"] = iso_date(options.created_at);
  if (std::string r = common_meta(files, "modelspec.resolution", nullptr); !r.empty()) meta["modelspec.resolution"] = r;
  meta["fluxtrain.merge_mode"] = svd ? "svd" : "concat";
  if (svd) meta["fluxtrain.merge_rank"] = std::to_string(options.rank);
  nlohmann::ordered_json sources = nlohmann::ordered_json::array();
  for (const auto& f : files) {
    nlohmann::ordered_json s;
    s["file"] = fs::path(f.path).filename().string();
    s["weight"] = f.weight;
    s["rank"] = rank_text(f);
    if (std::string h = f.meta("sshs_model_hash"); !h.empty()) s["sshs_model_hash"] = h;
    sources.push_back(s);
  }
  meta["fluxtrain.merged_from"] = sources.dump();
  meta["sshs_model_hash"] = safetensors::data_sha256(tensors);
  safetensors::write(out, tensors, meta);
  return report;
}

namespace {

// kohya module prefix -> the checkpoint key prefixes its modules can live under (a component's own
// file, or a merged "all in one" checkpoint).
const std::vector<std::pair<std::string_view, const std::vector<std::string>*>>& lora_prefixes() {
  static const std::vector<std::pair<std::string_view, const std::vector<std::string>*>> table = {
      {keys::kTransformerPrefix, &models::kFluxPrefixes},
      {keys::kClipPrefix, &models::kClipPrefixes},
      {keys::kT5Prefix, &models::kT5Prefixes}};
  return table;
}

// The LoRA module name of every 2-D `.weight` of the checkpoint, possibly several keys per name, which
// is then ambiguous.
std::map<std::string, std::vector<const TensorInfo*>> module_targets(const safetensors::Header& header) {
  std::map<std::string, std::vector<const TensorInfo*>> targets;
  for (const TensorInfo& info : header.tensors) {
    if (info.shape.size() != 2 || !info.name.ends_with(".weight")) continue;
    std::string stem = info.name.substr(0, info.name.size() - std::strlen(".weight"));
    for (const auto& [lora_prefix, key_prefixes] : lora_prefixes()) {
      for (const std::string& key_prefix : *key_prefixes) {
        if (stem.compare(0, key_prefix.size(), key_prefix) != 0) continue;
        targets[keys::module_name(lora_prefix, stem.substr(key_prefix.size()))].push_back(&info);
      }
    }
  }
  return targets;
}

// The tensors fluxtrain's fp8 base keeps in fp8: 2-D Linear weights inside the repeated blocks.
bool is_block_matrix(const TensorInfo& info) {
  if (info.shape.size() != 2 || !info.name.ends_with(".weight")) return false;
  for (const std::string& prefix : models::kFluxPrefixes) {
    if (info.name.compare(0, prefix.size() + 14, prefix + "double_blocks.") == 0 ||
        info.name.compare(0, prefix.size() + 14, prefix + "single_blocks.") == 0) {
      return true;
    }
  }
  return false;
}

struct Patch {
  const LoraFile* file;
  const ModuleEntry* module;  // a plain LoRA's, or
  std::shared_ptr<const PartTensors> adapter;  // a LyCORIS module's tensors (fp32)
};

}  // namespace

BakeReport bake_loras(const std::string& base, const std::vector<WeightedLora>& loras, const std::string& out,
                      const BakeOptions& options) {
  if (loras.empty()) fail("merge --base: no LoRA given; pass --lora FILE[:STRENGTH] at least once");
  std::error_code ec;
  if (!fs::exists(base, ec)) fail("--base ", base, " does not exist (check the path)");
  if (fs::is_directory(base, ec)) {
    fail("--base ", base,
         " is a folder (a diffusers layout?); baking needs a single-file checkpoint such as "
         "flux1-dev.safetensors");
  }
  std::vector<std::string> paths = {base};
  for (const auto& l : loras) paths.push_back(l.path);
  check_output_is_not_an_input(out, paths);

  auto reader = std::make_shared<safetensors::Reader>(base);
  const safetensors::Header& header = reader->header();
  std::vector<LoraFile> files;
  for (const auto& l : loras) files.push_back(open_lora(l));

  // Every module of every LoRA must find its weight.
  const auto targets = module_targets(header);
  std::map<std::string, std::vector<Patch>> patches;  // base key -> what is added to it
  std::vector<std::string> unmatched, problems;
  BakeReport report;
  // The one base weight of a module, or nullptr with the reason noted.
  auto target_of = [&](const std::string& name, const std::string& path) -> const TensorInfo* {
    auto it = targets.find(name);
    if (it == targets.end()) {
      unmatched.push_back(cat(name, " (", path, ")"));
      return nullptr;
    }
    if (it->second.size() > 1) {
      problems.push_back(cat(name, " (", path, "): matches several weights of the base (", it->second[0]->name, ", ",
                             it->second[1]->name, "), so it is ambiguous"));
      return nullptr;
    }
    return it->second.front();
  };
  for (const auto& f : files) {
    for (const auto& [name, m] : f.modules) {
      const TensorInfo* target = target_of(name, f.path);
      if (target == nullptr) continue;
      const TensorInfo& w = *target;
      if (w.shape[0] != m.out || w.shape[1] != m.in) {
        problems.push_back(cat(name, " (", f.path, "): ΔW is ", shape_text(m.out, m.in), " but ", w.name, " is ",
                               at::IntArrayRef(w.shape), "; the LoRA was trained on a different model"));
        continue;
      }
      if (!is_float(w.dtype)) {
        problems.push_back(
            cat(name, ": ", w.name, " has dtype ", safetensors::dtype_name(w.dtype),
                ", which cannot take a LoRA (quantised checkpoints other than plain fp8 are not supported)"));
        continue;
      }
      patches[w.name].push_back({&f, &m, nullptr});
      ++report.modules;
    }
    for (const auto& [name, parts] : f.lycoris) {
      const TensorInfo* target = target_of(name, f.path);
      if (target == nullptr) continue;
      const TensorInfo& w = *target;
      auto tensors = std::make_shared<PartTensors>();
      for (const auto& [part, info] : parts) (*tensors)[part] = f.load(info, at::kFloat);
      const std::string problem =
          w.shape.size() == 2 ? check_adapter(*tensors, w.shape[0], w.shape[1]) : std::string("not a 2-D weight");
      if (!problem.empty()) {
        problems.push_back(cat(name, " (", f.path, "): ", problem, " for ", w.name));
        continue;
      }
      if (!is_float(w.dtype)) {
        problems.push_back(cat(name, ": ", w.name, " has dtype ", safetensors::dtype_name(w.dtype),
                               ", which cannot take a LoRA"));
        continue;
      }
      patches[w.name].push_back({&f, nullptr, std::move(tensors)});
      ++report.modules;
    }
  }
  if (!unmatched.empty() || !problems.empty()) {
    std::string message = cat(base, ": the LoRAs do not fit this checkpoint");
    if (!unmatched.empty()) {
      std::vector<std::string> names;
      for (const auto& [name, keys] : targets) names.push_back(name);
      message += cat("\n  ", unmatched.size(), " LoRA modules match no 2-D weight of the base, e.g.:");
      for (size_t i = 0; i < unmatched.size() && i < 8; ++i) {
        std::string hint = closest_match(unmatched[i].substr(0, unmatched[i].find(' ')), names);
        message += "\n    " + unmatched[i] + (hint.empty() ? "" : "; closest: " + hint);
      }
      // An example of what the base does hold, under the same LoRA prefix when there is one.
      const std::string_view prefix = keys::component_prefix(unmatched.front());
      auto example =
          std::find_if(names.begin(), names.end(), [&](const std::string& n) { return n.starts_with(prefix); });
      if (example == names.end()) example = names.begin();
      if (example != names.end()) message += cat("\n  (the base's weights take names like ", *example, ")");
    }
    for (size_t i = 0; i < problems.size() && i < 8; ++i) message += "\n  " + problems[i];
    message += cat("\n fix: use a LoRA trained for this base model (kohya names ", keys::kTransformerPrefix,
                   "<key with . -> _>), and a BFL single-file checkpoint");
    throw Error(message);
  }

  // Output dtype of each tensor.
  auto out_dtype = [&](const TensorInfo& info) {
    if (!options.dtype || !is_float(info.dtype)) return info.dtype;
    if (*options.dtype == Dtype::F8_E4M3) return is_block_matrix(info) ? Dtype::F8_E4M3 : info.dtype;
    return *options.dtype;
  };
  uint64_t out_bytes = 0;
  for (const TensorInfo& info : header.tensors) out_bytes += info.numel() * safetensors::dtype_size(out_dtype(info));
  fs::path folder = fs::absolute(out).parent_path();
  if (auto space = fs::space(folder, ec); !ec && space.available < out_bytes) {
    fail("not enough disk space for ", out, ": it needs ", format_bytes(static_cast<double>(out_bytes)), ", ",
         folder.string(), " has ", format_bytes(static_cast<double>(space.available)), " free");
  }
  bool fp8_output = false;
  for (const auto& [key, list] : patches) {
    const TensorInfo& info = *header.find(key);
    fp8_output = fp8_output || out_dtype(info) == Dtype::F8_E4M3;
  }
  if (fp8_output) {
    log::warn(
        "fp8 base: the weights that get a LoRA are upcast, summed and rounded back to fp8 (e4m3fn); changes "
        "smaller than fp8's resolution are lost (the error is reported at the end)");
  }

  struct Stats {
    double fp8_error2 = 0, fp8_delta2 = 0;
    int64_t clamped = 0;
    const TensorInfo* previous = nullptr;
  };
  auto stats = std::make_shared<Stats>();
  std::vector<safetensors::TensorSource> sources;
  for (const TensorInfo& info : header.tensors) {
    const Dtype dtype = out_dtype(info);
    auto patch = patches.find(info.name);
    const std::vector<Patch>* list = patch == patches.end() ? nullptr : &patch->second;
    sources.push_back({info.name, dtype, info.shape, [reader, stats, list, dtype, &info]() -> at::Tensor {
                         // The previous tensor is written by now: drop its pages.
                         if (stats->previous != nullptr) reader->release(*stats->previous);
                         stats->previous = &info;
                         at::Tensor w = reader->tensor(info);
                         const at::ScalarType type = safetensors::to_scalar_type(dtype);
                         const bool fp8 = type == at::kFloat8_e4m3fn;
                         if (list == nullptr && (w.scalar_type() == type || !fp8)) return w.to(type);
                         // One float32 working tensor: ΔW, then W + ΔW in place.
                         at::Tensor value;
                         double delta2 = 0;
                         if (list == nullptr) {
                           value = w.to(at::kFloat);
                         } else {
                           // ΔW summed, then added; with a LyCORIS module in the list the patches apply in
                           // the files' order, as ComfyUI's do (DoRA rescales what is there so far).
                           const bool sequential = std::any_of(list->begin(), list->end(),
                                                               [](const Patch& p) { return p.adapter != nullptr; });
                           value = sequential ? w.to(at::kFloat).clone() : at::zeros(w.sizes(), at::kFloat);
                           for (const Patch& p : *list) {
                             if (p.adapter) {
                               value = apply_adapter(value, *p.adapter, p.file->weight);
                               continue;
                             }
                             at::Tensor up = p.file->load(p.module->up, at::kFloat);
                             at::Tensor down = p.file->load(p.module->down, at::kFloat);
                             value.addmm_(up, down, /*beta=*/1, /*alpha=*/p.file->weight * p.module->scale);
                           }
                           if (sequential) {
                             if (fp8) delta2 = (value - w.to(at::kFloat)).square().sum(at::kDouble).item<double>();
                           } else {
                             if (fp8) delta2 = value.square().sum(at::kDouble).item<double>();
                             value.add_(w.to(at::kFloat));  // a no-op view for an fp32 base
                           }
                         }
                         if (!fp8) return value.to(type);
                         // e4m3fn has no infinity: values past ±448 would become NaN, so they are clamped.
                         stats->clamped += (value.abs() > kE4M3Max).sum().item<int64_t>();
                         at::Tensor q = value.clamp(-kE4M3Max, kE4M3Max).to(at::kFloat8_e4m3fn);
                         if (list != nullptr) {
                           stats->fp8_error2 += (q.to(at::kFloat) - value).square().sum(at::kDouble).item<double>();
                           stats->fp8_delta2 += delta2;
                         }
                         return q;
                       }});
  }
  safetensors::Metadata meta = header.metadata;
  nlohmann::ordered_json baked = nlohmann::ordered_json::array();
  for (const auto& f : files) {
    nlohmann::ordered_json s;
    s["file"] = fs::path(f.path).filename().string();
    s["strength"] = f.weight;
    if (std::string h = f.meta("sshs_model_hash"); !h.empty()) s["sshs_model_hash"] = h;
    baked.push_back(s);
  }
  meta["fluxtrain.baked_loras"] = baked.dump();
  {
    ProgressOptions bytes;
    bytes.unit = "B";
    Progress progress("writing " + fs::path(out).filename().string(), static_cast<int64_t>(out_bytes), bytes);
    safetensors::write(out, std::move(sources), meta, &progress);
  }
  if (stats->previous != nullptr) reader->release(*stats->previous);
  report.tensors = patches.size();
  report.written = header.tensors.size();
  report.fp8_clamped = stats->clamped;
  report.fp8_relative_error = stats->fp8_delta2 > 0 ? std::sqrt(stats->fp8_error2 / stats->fp8_delta2) : 0;
  if (fp8_output) {
    log::warn("fp8 rounding: the rounding error of the changed weights is ", significant(report.fp8_relative_error, 3),
              " × the size of the LoRA's change (‖Q(W+ΔW) − (W+ΔW)‖ / ‖ΔW‖)",
              report.fp8_clamped > 0 ? cat("; ", report.fp8_clamped, " values were clamped to ±448") : std::string(),
              "; bake into a bf16 base (or --dtype bf16) to keep the LoRA exactly");
  }
  return report;
}

}  // namespace fluxtrain::lora
