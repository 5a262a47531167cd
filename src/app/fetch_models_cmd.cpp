// `fluxtrain fetch-models`: downloads the four model files of a run (the Flux transformer, the AE, CLIP-L
// and T5-XXL) from the Hugging Face Hub into MODEL_DIR under the names `train` searches for
// (usual_model_names), so that a pod can start from an empty volume. Torch-free.
//
// A file that is already there under any of its usual names (an fp8 T5 counts for the fp16 one) is
// skipped without a request, so a restarted pod starts offline; --verify hashes it against the Hub.
// Every download is resumable (".part" files), retried, and checked against the size and the LFS
// sha256 of the Hub's tree listing before it is renamed onto its final name: a file at its final name
// is always whole. FLUX.1-dev is gated, so a 401/403 says to accept the licence and set HF_TOKEN.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "app/commands.h"
#include "app/environment_knobs.h"
#include "app/options.h"
#include "app/train_options.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "fetch/http.h"
#include "fetch/hub.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

// A file in a Hub model repository: "owner/name/path/in/repo", or "owner/name@revision/path/in/repo".
struct HubFileRef {
  std::string repo;
  std::string revision = "main";
  std::string path;
};

std::optional<HubFileRef> parse_hub_file_ref(const std::string& text, std::string& why) {
  size_t first = text.find('/');
  size_t second = first == std::string::npos ? std::string::npos : text.find('/', first + 1);
  if (second == std::string::npos || second + 1 >= text.size()) {
    why = "not owner/name/path/in/repo";
    return std::nullopt;
  }
  HubFileRef ref;
  ref.repo = text.substr(0, second);
  ref.path = text.substr(second + 1);
  if (size_t at = ref.repo.find('@'); at != std::string::npos) {
    ref.revision = ref.repo.substr(at + 1);
    ref.repo.resize(at);
    if (ref.revision.empty() || ref.repo.find('/') == std::string::npos) {
      why = "the revision after '@' is empty or the owner/name is cut";
      return std::nullopt;
    }
  }
  if (ref.repo.front() == '/' || ref.repo.find("..") != std::string::npos || ref.path.find("..") != std::string::npos ||
      ref.path.front() == '/' || ref.path.back() == '/') {
    why = "not a plain repository and file path";
    return std::nullopt;
  }
  return ref;
}

std::string check_source(const OptionValue& value) {
  std::string why;
  if (!parse_hub_file_ref(std::get<std::string>(value), why)) return why;
  return "";
}

// The sizes in the help are those of the Hub's files (2024), for planning the volume.
OptionTable make_fetch_models_options() {
  const OptionTable& train = train_options();
  std::vector<OptionSpec> specs;
  OptionSpec model_dir = train.at("model_dir");
  model_dir.help =
      "Folder the model files are downloaded into (created if needed), under the names train searches for; train "
      "then finds them with the same MODEL_DIR.";
  model_dir.path_check = PathCheck::none;
  specs.push_back(model_dir);
  specs.push_back(train.at("base_model"));
  for (const char* name : {"model", "ae", "clip_l", "t5xxl"}) {
    OptionSpec spec = train.at(name);
    spec.help += " When set, that file is not downloaded.";
    specs.push_back(spec);
  }
  auto choice = [](std::string name, std::string env, std::string default_text, std::vector<std::string> choices,
                   std::string help) {
    OptionSpec s;
    s.name = std::move(name);
    s.type = OptionType::choice;
    s.group = "download";
    s.env = std::move(env);
    s.default_text = std::move(default_text);
    s.choices = std::move(choices);
    s.help = std::move(help);
    return s;
  };
  specs.push_back(choice("base_variant", "MODEL_BASE_VARIANT", "bf16", {"bf16", "fp8"},
                         "Which Flux transformer to download: bf16, the original (flux1-dev.safetensors, 23.8 GB), or "
                         "fp8 e4m3fn (flux1-dev-fp8.safetensors, 11.9 GB, from Kijai/flux-fp8; train it with "
                         "PARAMS_FP8_BASE=true)."));
  specs.push_back(choice("t5xxl_variant", "MODEL_T5XXL_VARIANT", "fp16", {"fp16", "fp8"},
                         "Which T5-XXL to download: fp16 (t5xxl_fp16.safetensors, 9.8 GB) or fp8 e4m3fn "
                         "(t5xxl_fp8_e4m3fn.safetensors, 4.9 GB)."));
  auto source = [](std::string name, std::string env, std::string what, std::string fallback) {
    OptionSpec s;
    s.name = std::move(name);
    s.type = OptionType::string;
    s.group = "download";
    s.env = std::move(env);
    s.help = cat("Hub file to download as ", what, "; unset: ", fallback, ".");
    s.allowed = "owner/name/path/in/repo or owner/name@revision/path/in/repo";
    s.check = check_source;
    return s;
  };
  specs.push_back(source("model_source", "MODEL_SOURCE_FLUX", "the Flux transformer",
                         "black-forest-labs/FLUX.1-dev/flux1-dev.safetensors (FLUX.1-schnell for flux-schnell; "
                         "Kijai/flux-fp8/flux1-dev-fp8.safetensors for the fp8 variant)"));
  specs.push_back(
      source("ae_source", "MODEL_SOURCE_AE", "the autoencoder", "ae.safetensors of the base model's repository"));
  specs.push_back(
      source("clip_l_source", "MODEL_SOURCE_CLIP_L", "CLIP-L", "comfyanonymous/flux_text_encoders/clip_l.safetensors"));
  specs.push_back(source("t5xxl_source", "MODEL_SOURCE_T5XXL", "T5-XXL",
                         "comfyanonymous/flux_text_encoders/t5xxl_fp16.safetensors (t5xxl_fp8_e4m3fn.safetensors "
                         "for the fp8 variant)"));
  OptionSpec verify;
  verify.name = "verify";
  verify.type = OptionType::boolean;
  verify.group = "download";
  verify.env = "MODEL_VERIFY";
  verify.default_text = "false";
  verify.help =
      "Also check the files already present against the Hub's sha256 (reads them all: about a minute for the "
      "transformer); one that differs is downloaded again.";
  specs.push_back(verify);
  return OptionTable("fetch-models", {{"models", "Model folder and files given"}, {"download", "Model download"}},
                     std::move(specs));
}

const OptionTable& fetch_models_options() {
  static const OptionTable table = make_fetch_models_options();
  return table;
}

struct Slot {
  std::string kind;        // "model", "ae", "clip_l", "t5xxl" (usual_model_names)
  std::string what;        // for messages
  std::string local_name;  // the name it is saved under
  std::string source_var;  // the variable that overrides the source
  HubFileRef source;
};

std::vector<Slot> plan_slots(const ResolvedConfig& config) {
  const bool schnell = config.get_string("base_model") == "flux-schnell";
  const bool base_fp8 = config.get_string("base_variant") == "fp8";
  const bool t5_fp8 = config.get_string("t5xxl_variant") == "fp8";
  const std::string bfl = schnell ? "black-forest-labs/FLUX.1-schnell" : "black-forest-labs/FLUX.1-dev";
  const std::string stem = schnell ? "flux1-schnell" : "flux1-dev";
  const std::string encoders = "comfyanonymous/flux_text_encoders";
  std::vector<Slot> slots = {
      {"model", "the Flux transformer", base_fp8 ? stem + "-fp8.safetensors" : stem + ".safetensors",
       "MODEL_SOURCE_FLUX",
       base_fp8 ? HubFileRef{"Kijai/flux-fp8", "main", stem + "-fp8.safetensors"}
                : HubFileRef{bfl, "main", stem + ".safetensors"}},
      {"ae", "the autoencoder", "ae.safetensors", "MODEL_SOURCE_AE", {bfl, "main", "ae.safetensors"}},
      {"clip_l",
       "the CLIP-L text encoder",
       "clip_l.safetensors",
       "MODEL_SOURCE_CLIP_L",
       {encoders, "main", "clip_l.safetensors"}},
      {"t5xxl",
       "the T5-XXL text encoder",
       t5_fp8 ? "t5xxl_fp8_e4m3fn.safetensors" : "t5xxl_fp16.safetensors",
       "MODEL_SOURCE_T5XXL",
       {encoders, "main", t5_fp8 ? "t5xxl_fp8_e4m3fn.safetensors" : "t5xxl_fp16.safetensors"}}};
  for (Slot& slot : slots) {
    if (auto text = config.find_string(slot.kind + "_source"); text && !text->empty()) {
      std::string why;
      slot.source = *parse_hub_file_ref(*text, why);  // checked by the table
    }
  }
  return slots;
}

std::string access_hint(const HubFileRef& ref, const fetch::FetchOptions& options) {
  return cat("if ", ref.repo, " is gated (FLUX.1-dev is), accept its licence on the model page ", options.hf_endpoint,
             "/", ref.repo, " and set HF_TOKEN to a read token of the account that accepted it");
}

// The listing entry of each slot's file: one request per repository folder.
std::vector<fetch::HubFile> list_sources(const std::vector<const Slot*>& slots, const fetch::FetchOptions& options) {
  std::map<std::string, std::vector<fetch::HubFile>> listings;
  std::vector<fetch::HubFile> out;
  for (const Slot* slot : slots) {
    const HubFileRef& ref = slot->source;
    const size_t slash = ref.path.rfind('/');
    fetch::HubListing listing;
    listing.type = fetch::HubRepoType::model;
    listing.repo = ref.repo;
    listing.revision = ref.revision;
    listing.folder = slash == std::string::npos ? "" : ref.path.substr(0, slash);
    listing.recursive = false;
    listing.not_found_hint = cat("check the repository and revision at ", options.hf_endpoint, "/", ref.repo,
                                 ", or name another file with ", slot->source_var);
    listing.access_hint = access_hint(ref, options);
    const std::string key = cat(ref.repo, "@", ref.revision, ":", listing.folder);
    if (!listings.count(key)) listings[key] = fetch::list_hub_files(listing, options);
    const std::vector<fetch::HubFile>& files = listings[key];
    const fetch::HubFile* found = nullptr;
    std::vector<std::string> names;
    for (const fetch::HubFile& file : files) {
      if (file.path == ref.path) found = &file;
      names.push_back(file.path);
    }
    if (found == nullptr) {
      const std::string hint = closest_match(ref.path, names);
      fail("Hugging Face model ", ref.repo, " at revision '", ref.revision, "' has no file '", ref.path, "' (",
           slot->what, ")", hint.empty() ? "" : cat("; did you mean '", hint, "'?"), "; set ", slot->source_var,
           " to owner/name/path of the file to download");
    }
    out.push_back(*found);
  }
  return out;
}

int run_fetch_models(const ResolvedConfig& config) {
  if (!config.is_set("model_dir") || config.get_string("model_dir").empty())
    fail("no model folder: set MODEL_DIR (--model-dir) to the folder to download the model files into");
  const fs::path dir(config.get_string("model_dir"));
  const std::string base = config.get_string("base_model");
  const bool verify = config.get_bool("verify");
  fetch::FetchOptions options = fetch_options_from_environment();

  std::vector<Slot> slots = plan_slots(config);
  std::vector<const Slot*> wanted;
  std::vector<const Slot*> to_verify;  // present under the name it would be downloaded as
  for (const Slot& slot : slots) {
    if (auto given = config.find_string(slot.kind); given && !given->empty()) {
      log::info(slot.what, ": ", *given, " (", config.where(slot.kind), "), not downloaded");
      continue;
    }
    std::string present;
    for (const std::string& name : usual_model_names(slot.kind, base)) {
      std::error_code ec;
      if (fs::is_regular_file(dir / name, ec)) {
        present = name;
        break;
      }
    }
    if (present.empty()) {
      wanted.push_back(&slot);
    } else if (verify && present == slot.local_name) {
      to_verify.push_back(&slot);
    } else {
      log::info(slot.what, ": ", (dir / present).string(), " is present",
                verify ? " (not the file it would download, so not verified)" : "");
    }
  }
  if (!to_verify.empty()) {
    const std::vector<fetch::HubFile> listed = list_sources(to_verify, options);
    for (size_t i = 0; i < to_verify.size(); ++i) {
      const fs::path path = dir / to_verify[i]->local_name;
      std::error_code ec;
      const bool size_ok = fs::file_size(path, ec) == static_cast<uint64_t>(listed[i].size);
      if (size_ok && (listed[i].sha256.empty() || sha256_file_hex(path) == listed[i].sha256)) {
        log::info(to_verify[i]->what, ": ", path.string(), " is present and matches the Hub");
        continue;
      }
      log::warn(to_verify[i]->what, ": ", path.string(), " differs from ", to_verify[i]->source.repo, "/",
                to_verify[i]->source.path, " (", size_ok ? "sha256" : "size", "); downloading it again");
      wanted.push_back(to_verify[i]);
    }
  }
  if (wanted.empty()) {
    log::info("model files complete in ", dir.string());
    std::cout << dir.string() << std::endl;
    return 0;
  }

  fs::create_directories(dir);
  const std::vector<fetch::HubFile> files = list_sources(wanted, options);
  int64_t needed = 0;
  for (size_t i = 0; i < wanted.size(); ++i) {
    std::error_code ec;
    const auto part = fs::file_size(dir / (wanted[i]->local_name + ".part"), ec);
    needed += files[i].size - (ec ? 0 : static_cast<int64_t>(part));
  }
  std::error_code ec;
  const fs::space_info space = fs::space(dir, ec);
  if (!ec && static_cast<double>(space.available) < static_cast<double>(needed))
    fail("the model files need ", format_bytes(static_cast<double>(needed)), " more, but ", dir.string(), " has ",
         format_bytes(static_cast<double>(space.available)),
         " free: use a larger volume, or the fp8 variants (MODEL_BASE_VARIANT=fp8, MODEL_T5XXL_VARIANT=fp8)");
  log::info("downloading ", wanted.size(), " model file", wanted.size() == 1 ? "" : "s", " (",
            format_bytes(static_cast<double>(needed)), ") into ", dir.string(), " from ", options.hf_endpoint);
  for (size_t i = 0; i < wanted.size(); ++i) {
    const Slot& slot = *wanted[i];
    const fetch::HubFile& file = files[i];
    if (file.sha256.empty())
      log::warn(slot.source.repo, "/", file.path,
                " has no sha256 in the Hub's listing (not an LFS file): checked by size only");
    fetch::HttpRequest request;
    request.url =
        fetch::hub_file_url(fetch::HubRepoType::model, slot.source.repo, slot.source.revision, file.path, options);
    request.auth = fetch::hub_auth(options);
    request.what = cat(slot.what, " (", slot.source.repo, "/", file.path, ")");
    request.not_found_hint = cat("check the file at ", options.hf_endpoint, "/", slot.source.repo,
                                 ", or name another with ", slot.source_var);
    request.access_hint = access_hint(slot.source, options);
    fetch::DownloadTarget target;
    target.path = dir / slot.local_name;
    target.expected_size = file.size;
    target.expected_sha256 = file.sha256;
    fetch::http_download(request, target, options.http);
    log::info(slot.what, ": ", target.path.string(), " (", format_bytes(static_cast<double>(file.size)),
              file.sha256.empty() ? "" : ", sha256 checked", ")");
  }
  log::info("model files complete in ", dir.string());
  std::cout << dir.string() << std::endl;
  return 0;
}

}  // namespace

Command add_fetch_models_command(CLI::App& app) {
  struct State {
    std::unique_ptr<CliBinding> binding;
    bool help_env = false;
    std::string format = "text";
  };
  auto state = std::make_shared<State>();
  CLI::App* sub = app.add_subcommand(
      "fetch-models",
      "Download the Flux model files (transformer, AE, CLIP-L, T5-XXL) from the Hugging Face Hub into MODEL_DIR; "
      "files already there are skipped");
  state->binding = std::make_unique<CliBinding>(*sub, fetch_models_options());
  sub->add_flag("--help-env", state->help_env, "Print the reference of the environment variables and exit");
  sub->add_option("--format", state->format, "--help-env format: text or markdown")->capture_default_str();
  return {sub, [state] {
            const OptionTable& table = fetch_models_options();
            if (state->help_env) {
              std::cout << help_env(table, state->format);
              return 0;
            }
            // Only this command's variables: a pod's environment also holds every PARAMS_* of train.
            EnvMap env;
            const std::vector<std::string> names = table.env_names();
            for (const auto& [name, value] : environment()) {
              if (std::find(names.begin(), names.end(), name) != names.end()) env[name] = value;
            }
            ResolvedConfig config = resolve(table, ResolveInputs{state->binding->values(), env});
            for (const auto& w : config.warnings()) log::warn(w);
            return run_fetch_models(config);
          }};
}

}  // namespace fluxtrain::app
