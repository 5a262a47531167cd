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
#include "app/fetch_models_options.h"
#include "app/options.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "fetch/http.h"
#include "fetch/hub.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

struct Slot {
  ModelFileKind kind;
  std::string what;        // for messages
  std::string local_name;  // the name it is saved under
  std::string source_var;  // the variable that overrides the source
  HubFileRef source;
  std::string given;  // a file given for it: not downloaded
};

std::vector<Slot> plan_slots(const FetchModelsSettings& settings) {
  const bool schnell = settings.models.base_model == BaseModel::schnell;
  const bool base_fp8 = settings.base_variant == BaseVariant::fp8;
  const bool t5_fp8 = settings.t5xxl_variant == T5Variant::fp8;
  const std::string bfl = schnell ? "black-forest-labs/FLUX.1-schnell" : "black-forest-labs/FLUX.1-dev";
  const std::string stem = schnell ? "flux1-schnell" : "flux1-dev";
  const std::string encoders = "comfyanonymous/flux_text_encoders";
  std::vector<Slot> slots = {
      {ModelFileKind::model, "the Flux transformer", base_fp8 ? stem + "-fp8.safetensors" : stem + ".safetensors",
       "MODEL_SOURCE_FLUX",
       base_fp8 ? HubFileRef{"Kijai/flux-fp8", "main", stem + "-fp8.safetensors"}
                : HubFileRef{bfl, "main", stem + ".safetensors"},
       ""},
      {ModelFileKind::ae, "the autoencoder", "ae.safetensors", "MODEL_SOURCE_AE", {bfl, "main", "ae.safetensors"}, ""},
      {ModelFileKind::clip_l,
       "the CLIP-L text encoder",
       "clip_l.safetensors",
       "MODEL_SOURCE_CLIP_L",
       {encoders, "main", "clip_l.safetensors"},
       ""},
      {ModelFileKind::t5xxl,
       "the T5-XXL text encoder",
       t5_fp8 ? "t5xxl_fp8_e4m3fn.safetensors" : "t5xxl_fp16.safetensors",
       "MODEL_SOURCE_T5XXL",
       {encoders, "main", t5_fp8 ? "t5xxl_fp8_e4m3fn.safetensors" : "t5xxl_fp16.safetensors"},
       ""}};
  const FetchModelsSettings::Source* sources[] = {&settings.model_source, &settings.ae_source, &settings.clip_l_source,
                                                  &settings.t5xxl_source};
  const std::string* given[] = {&settings.models.given.model, &settings.models.given.ae, &settings.models.given.clip_l,
                                &settings.models.given.t5xxl};
  for (size_t i = 0; i < slots.size(); ++i) {
    if (sources[i]->ref) {
      slots[i].source = *sources[i]->ref;
      slots[i].source_var = sources[i]->origin;
    }
    slots[i].given = *given[i];
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

int run_fetch_models(const FetchModelsSettings& settings) {
  if (settings.models.dir.empty())
    fail("no model folder: set MODEL_DIR (--model-dir) to the folder to download the model files into");
  const fs::path dir(settings.models.dir);
  const BaseModel base = settings.models.base_model;
  const bool verify = settings.verify;
  const fetch::FetchOptions& options = settings.downloads.fetch;

  std::vector<Slot> slots = plan_slots(settings);
  std::vector<const Slot*> wanted;
  std::vector<const Slot*> to_verify;  // present under the name it would be downloaded as
  for (const Slot& slot : slots) {
    if (!slot.given.empty()) {
      log::info(slot.what, ": ", slot.given, " (given), not downloaded");
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
  return add_table_command(app, command_info("fetch-models"), [](const ResolvedConfig& config) {
    const FetchModelsSettings settings = config.bind<FetchModelsSettings>();
    stop::install(stop::grace_seconds());  // a stop signal ends the downloads, their part files kept: exit 0
    return run_fetch_models(settings);
  });
}

}  // namespace fluxtrain::app
