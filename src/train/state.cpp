#include "train/state.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "core/strings.h"

namespace fluxtrain::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kComplete = "COMPLETE";
constexpr const char* kPrefix = "step-";
constexpr const char* kCorrupt = ".corrupt";
const char* const kStateFiles[] = {"trainable.safetensors", "optimizer.safetensors", "state.json"};
// Written only by runs with an EMA; checked whenever COMPLETE lists it.
constexpr const char* kEmaFile = "ema.safetensors";

std::vector<std::pair<std::string, at::Tensor>> read_tensors(const fs::path& path) {
  safetensors::Reader reader(path.string());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& info : reader.header().tensors) out.emplace_back(info.name, reader.tensor(info).clone());
  return out;
}

int64_t step_of(const fs::path& dir) {
  std::string name = dir.filename().string();
  if (name.rfind(kPrefix, 0) != 0) return -1;
  try {
    size_t used = 0;
    int64_t step = std::stoll(name.substr(5), &used);
    return used == name.size() - 5 ? step : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

// (step, dir) of every state directory, oldest first.
std::vector<std::pair<int64_t, fs::path>> state_dirs(const fs::path& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  fs::path root = output_dir / "state";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root)) {
    int64_t step = step_of(entry.path());
    if (entry.is_directory() && step >= 0) out.emplace_back(step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

namespace {

// Removes a state folder without ever leaving a half-removed one under a state's name: it is first renamed
// (atomically) to a temporary name of this process, ".step-XXXXXXXX.tmp-PID-1", then removed. A kill part
// way leaves that temporary folder, which the next start removes (remove_stale_temporaries).
void remove_state_folder(const fs::path& dir) {
  std::error_code ec;
  const fs::path doomed =
      dir.parent_path() / ("." + dir.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-1");
  fs::remove_all(doomed, ec);
  fs::rename(dir, doomed, ec);
  fs::remove_all(ec ? dir : doomed, ec);
}

}  // namespace

std::string state_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kPrefix, static_cast<long long>(step));
  return name;
}

fs::path save_state(const fs::path& output_dir, int64_t step, const TrainingState& state) {
  const fs::path root = output_dir / "state";
  const fs::path dir = root / state_dir_name(step);
  const fs::path temp = root / ("." + state_dir_name(step) + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) fail("cannot create the state folder ", root.string(), ": ", ec.message());
  fs::remove_all(temp, ec);
  // What is kept when this save fails, for its message: older states are pruned only after it is complete.
  const std::optional<fs::path> kept = newest_state(output_dir);
  const std::string then = cat(
      kept ? cat("the newest complete state, ", kept->string(), ", is kept") : "no state is kept",
      "; free some space (or choose a larger disk) and restart: the run ", kept ? "resumes from it" : "starts again");
  // The bytes it needs: every tensor, plus the headers, state.json and COMPLETE (well under 1 MiB).
  uint64_t needed = uint64_t{1} << 20;
  for (const auto* tensors : {&state.trainable, &state.optimizer_tensors, &state.ema_tensors}) {
    for (const auto& [name, tensor] : *tensors) needed += static_cast<uint64_t>(tensor.nbytes());
  }
  ensure_free_space(root.string(), needed, cat("the training state of step ", step), then);
  try {
    fs::create_directories(temp);
    safetensors::write((temp / "trainable.safetensors").string(), state.trainable);
    stop::pause_point("saving");  // test hook (core/stop.h): a stop signal in the middle of a save
    safetensors::write((temp / "optimizer.safetensors").string(), state.optimizer_tensors);
    if (!state.ema_tensors.empty()) safetensors::write((temp / kEmaFile).string(), state.ema_tensors);
    nlohmann::json info = state.info;
    info["format_version"] = kStateFormatVersion;
    write_file_atomic((temp / "state.json").string(), info.dump(1) + "\n");
    nlohmann::json marker = {{"step", step}, {"files", nlohmann::json::object()}};
    std::vector<std::string> files(std::begin(kStateFiles), std::end(kStateFiles));
    if (!state.ema_tensors.empty()) files.emplace_back(kEmaFile);
    for (const auto& name : files) {
      marker["files"][name] = {{"size", fs::file_size(temp / name)}, {"sha256", sha256_file_hex(temp / name)}};
    }
    write_file_atomic((temp / kComplete).string(), marker.dump(1) + "\n");
    // An older save of this step (a re-run of the same step) goes first; the new one takes its name.
    if (fs::exists(dir)) remove_state_folder(dir);
    fs::rename(temp, dir);
    fsync_directory(root.string());
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temp, ec);
    fail("cannot save the training state ", dir.string(), ": ", e.code().message(), " (", e.path1().string(), "); ",
         then);
  } catch (const Error& e) {
    // A full disk (ENOSPC) or any other write error: the temporary folder goes, the older states stay.
    fs::remove_all(temp, ec);
    fail("cannot save the training state ", dir.string(), " (it needs about ",
         format_count(static_cast<long long>(needed)), " bytes in ", root.string(), "): ", e.what(), "; ", then);
  } catch (...) {
    fs::remove_all(temp, ec);  // nothing half-written stays where a state is expected
    throw;
  }
  return dir;
}

std::string verify_state(const fs::path& dir) {
  std::ifstream in(dir / kComplete);
  if (!in) return cat("no ", kComplete, " marker (an interrupted save)");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json marker;
  if (json_depth(text.str()) > kMaxJsonDepth)
    return cat(kComplete, " nests JSON deeper than ", kMaxJsonDepth, " levels");
  try {
    marker = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception&) {
    marker = nullptr;  // format 1: the step number only
  }
  const bool listed = marker.is_object() && marker.contains("files") && marker["files"].is_object();
  if (!listed && !marker.is_number_integer()) return cat(kComplete, " is neither a file list nor a step number");
  std::vector<std::string> files(std::begin(kStateFiles), std::end(kStateFiles));
  if (listed && marker["files"].contains(kEmaFile)) files.emplace_back(kEmaFile);
  for (const auto& name : files) {
    const fs::path file = dir / name;
    std::error_code ec;
    const uintmax_t size = fs::file_size(file, ec);
    if (ec) return cat(name, " is missing or unreadable (", ec.message(), ")");
    if (!listed) continue;
    if (!marker["files"].contains(name)) return cat(kComplete, " does not list ", name);
    const auto& expected = marker["files"][name];
    if (!expected.is_object() || !expected.contains("size") || !expected.contains("sha256"))
      return cat(kComplete, " lists ", name, " without its size and sha256");
    if (expected["size"] != size)
      return cat(name, " has ", size, " bytes where ", json_excerpt(expected["size"]), " were written");
    try {
      if (sha256_file_hex(file) != expected["sha256"]) return cat(name, " differs from what was written (SHA-256)");
    } catch (const Error& e) {
      return e.what();
    }
  }
  try {
    std::ifstream json(dir / "state.json");
    std::stringstream text;
    text << json.rdbuf();
    if (json_depth(text.str()) > kMaxJsonDepth)
      return cat("state.json nests JSON deeper than ", kMaxJsonDepth, " levels (corrupt)");
    const nlohmann::json parsed = nlohmann::json::parse(text.str());
    if (!parsed.is_object()) return "state.json does not hold a JSON object";
  } catch (const nlohmann::json::exception& e) {
    return cat("state.json is not valid JSON (", e.what(), ")");
  }
  return "";
}

TrainingState load_state(const fs::path& path, bool verified) {
  fs::path dir = path;
  if (!fs::exists(dir / kComplete)) {
    auto newest = newest_sound_state(path);
    if (newest) {
      dir = *newest;
      verified = true;
    } else if (fs::is_directory(path)) {
      fail(path.string(), ": not a complete training state (no ", kComplete,
           " marker) and no complete state under its state/ folder; pass a folder such as "
           "OUTPUT_PATH/state/step-00000100, or the run's OUTPUT_PATH");
    } else {
      fail(path.string(), ": no such training state folder");
    }
  }
  if (const std::string wrong = verified ? std::string() : verify_state(dir); !wrong.empty())
    fail(dir.string(), ": not a sound training state: ", wrong,
         ". Resume from an older state (its sibling folders) or the run's OUTPUT_PATH, which picks the newest "
         "sound one");
  TrainingState state;
  try {
    state.trainable = read_tensors(dir / "trainable.safetensors");
    state.optimizer_tensors = read_tensors(dir / "optimizer.safetensors");
    if (fs::exists(dir / kEmaFile)) state.ema_tensors = read_tensors(dir / kEmaFile);
    std::ifstream in(dir / "state.json");
    if (!in) fail(dir.string(), "/state.json is missing");
    std::stringstream text;
    text << in.rdbuf();
    check_json_depth(text.str(), dir.string() + "/state.json");
    state.info = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    fail(dir.string(), "/state.json is not valid JSON (", e.what(), "); resume from an older state");
  }
  const int version = state.info.value("format_version", 1);
  if (version > kStateFormatVersion)
    fail(dir.string(), ": a training state of format ", version,
         ", written by a newer fluxtrain; this one reads "
         "formats up to ",
         kStateFormatVersion, ". Resume with that version, or start a new run");
  state.info["_dir"] = dir.string();
  return state;
}

std::optional<fs::path> newest_state(const fs::path& output_dir) {
  auto dirs = state_dirs(output_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (fs::exists(it->second / kComplete)) return it->second;
  }
  return std::nullopt;
}

std::optional<fs::path> newest_sound_state(const fs::path& output_dir) {
  auto dirs = state_dirs(output_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    const fs::path& dir = it->second;
    if (!fs::exists(dir / kComplete)) continue;
    const std::string wrong = verify_state(dir);
    if (wrong.empty()) return dir;
    fs::path aside = dir;
    aside += kCorrupt;
    std::error_code ec;
    fs::remove_all(aside, ec);
    fs::rename(dir, aside, ec);
    if (ec)
      fail("the training state ", dir.string(), " is corrupt (", wrong, ") and cannot be set aside: ", ec.message());
    log::warn("the training state ", dir.string(), " is corrupt: ", wrong, "; kept as ", aside.filename().string(),
              " and not resumed; looking at the older ones");
  }
  return std::nullopt;
}

void prune_states(const fs::path& output_dir, int keep) {
  auto dirs = state_dirs(output_dir);
  std::vector<fs::path> complete;
  std::optional<fs::path> newest = newest_state(output_dir);
  for (const auto& [step, dir] : dirs) {
    if (fs::exists(dir / kComplete)) {
      complete.push_back(dir);
    } else if (!newest || step < step_of(*newest)) {
      remove_state_folder(dir);  // an interrupted save, superseded by a complete newer one
    }
  }
  if (keep <= 0) return;
  for (size_t i = 0; i + static_cast<size_t>(keep) < complete.size(); ++i) {
    remove_state_folder(complete[i]);
  }
}

std::string generator_state(const at::Generator& generator) {
  at::Tensor state = generator.get_state().contiguous();
  return base64_encode({reinterpret_cast<const char*>(state.data_ptr<uint8_t>()), static_cast<size_t>(state.numel())});
}

void set_generator_state(at::Generator& generator, const std::string& text, const std::string& what) {
  const std::optional<std::string> bytes = base64_decode(text);
  if (!bytes) fail(what, ": the saved generator state is not base64");
  at::Tensor state = at::empty({static_cast<int64_t>(bytes->size())}, at::kByte);
  std::memcpy(state.data_ptr<uint8_t>(), bytes->data(), bytes->size());
  try {
    generator.set_state(state);
  } catch (const std::exception& e) {
    fail(what, ": the saved generator state does not fit this generator (", e.what(), ")");
  }
}

namespace {

bool process_alive(long pid) {
  return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

// The pid in a temporary name ".NAME.tmp-PID-N" (atomic files) or ".step-X.tmp-PID" (state folders); 0
// when the name is not one of those.
long temporary_pid(const std::string& name) {
  if (name.empty() || name[0] != '.') return 0;
  const size_t at = name.rfind(".tmp-");
  if (at == std::string::npos || at == 0) return 0;
  const std::string rest = name.substr(at + 5);
  const size_t dash = rest.find('-');
  const std::string digits = rest.substr(0, dash);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return 0;
  if (dash != std::string::npos &&
      (dash + 1 >= rest.size() || rest.find_first_not_of("0123456789", dash + 1) != std::string::npos))
    return 0;
  try {
    return std::stol(digits);
  } catch (const std::exception&) {
    return 0;
  }
}

void remove_stale_in(const fs::path& folder) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const long pid = temporary_pid(entry.path().filename().string());
    if (pid != 0 && pid != ::getpid() && !process_alive(pid)) stale.push_back(entry.path());
  }
  for (const auto& path : stale) {
    fs::remove_all(path, ec);
    if (!ec) log::info("removed ", path.string(), ", left by a stopped process");
  }
}

}  // namespace

void remove_stale_temporaries(const fs::path& output_dir) {
  std::vector<fs::path> folders = {output_dir};
  std::error_code ec;
  if (fs::is_directory(output_dir, ec)) {
    for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
      if (entry.is_directory() && entry.path().filename().string().rfind("run-", 0) == 0)
        folders.push_back(entry.path());
    }
  }
  for (const auto& folder : folders) {
    remove_stale_in(folder);
    remove_stale_in(folder / "state");
    remove_stale_in(folder / "samples");
    remove_stale_in(folder / "cache");
    // Incomplete states (no COMPLETE: a save cut before this format's rename, or by hand) go too.
    for (const auto& [step, dir] : state_dirs(folder)) {
      if (!fs::exists(dir / kComplete)) remove_state_folder(dir);
    }
  }
}

}  // namespace fluxtrain::train
