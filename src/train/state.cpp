#include "train/state.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"

namespace fluxtrain::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kComplete = "COMPLETE";
constexpr const char* kPrefix = "step-";

const char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(const uint8_t* data, size_t size) {
  std::string out;
  out.reserve((size + 2) / 3 * 4);
  for (size_t i = 0; i < size; i += 3) {
    uint32_t v = static_cast<uint32_t>(data[i]) << 16;
    if (i + 1 < size) v |= static_cast<uint32_t>(data[i + 1]) << 8;
    if (i + 2 < size) v |= data[i + 2];
    out += kBase64[(v >> 18) & 63];
    out += kBase64[(v >> 12) & 63];
    out += i + 1 < size ? kBase64[(v >> 6) & 63] : '=';
    out += i + 2 < size ? kBase64[v & 63] : '=';
  }
  return out;
}

std::vector<uint8_t> unbase64(const std::string& text, const std::string& what) {
  std::vector<uint8_t> out;
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') break;
    const char* p = std::strchr(kBase64, c);
    if (p == nullptr || c == 0) fail(what, ": the saved generator state is not base64");
    buffer = (buffer << 6) | static_cast<uint32_t>(p - kBase64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((buffer >> bits) & 0xff));
    }
  }
  return out;
}

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

std::string state_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kPrefix, static_cast<long long>(step));
  return name;
}

fs::path save_state(const fs::path& output_dir, int64_t step, const TrainingState& state) {
  fs::path dir = output_dir / "state" / state_dir_name(step);
  std::error_code ec;
  fs::remove(dir / kComplete, ec);  // an older save of this step is incomplete until the end
  fs::create_directories(dir);
  safetensors::write((dir / "trainable.safetensors").string(), state.trainable);
  safetensors::write((dir / "optimizer.safetensors").string(), state.optimizer_tensors);
  nlohmann::json info = state.info;
  info["format_version"] = kStateFormatVersion;
  write_file_atomic((dir / "state.json").string(), info.dump(1) + "\n");
  write_file_atomic((dir / kComplete).string(), std::to_string(step) + "\n");
  return dir;
}

TrainingState load_state(const fs::path& path) {
  fs::path dir = path;
  if (!fs::exists(dir / kComplete)) {
    auto newest = newest_state(path);
    if (newest) {
      dir = *newest;
    } else if (fs::is_directory(path)) {
      fail(path.string(), ": not a complete training state (no ", kComplete,
           " marker) and no complete state under its state/ folder; pass a folder such as "
           "OUTPUT_PATH/state/step-00000100, or the run's OUTPUT_PATH");
    } else {
      fail(path.string(), ": no such training state folder");
    }
  }
  TrainingState state;
  try {
    state.trainable = read_tensors(dir / "trainable.safetensors");
    state.optimizer_tensors = read_tensors(dir / "optimizer.safetensors");
    std::ifstream in(dir / "state.json");
    if (!in) fail(dir.string(), "/state.json is missing");
    state.info = nlohmann::json::parse(in);
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

void prune_states(const fs::path& output_dir, int keep) {
  auto dirs = state_dirs(output_dir);
  std::vector<fs::path> complete;
  std::optional<fs::path> newest = newest_state(output_dir);
  for (const auto& [step, dir] : dirs) {
    if (fs::exists(dir / kComplete)) {
      complete.push_back(dir);
    } else if (!newest || step < step_of(*newest)) {
      std::error_code ec;
      fs::remove_all(dir, ec);  // an interrupted save, superseded by a complete newer one
    }
  }
  if (keep <= 0) return;
  for (size_t i = 0; i + static_cast<size_t>(keep) < complete.size(); ++i) {
    std::error_code ec;
    fs::remove(complete[i] / kComplete, ec);  // first, so a half-removed folder never looks complete
    fs::remove_all(complete[i], ec);
  }
}

std::string generator_state(const at::Generator& generator) {
  at::Tensor state = generator.get_state().contiguous();
  return base64(state.data_ptr<uint8_t>(), static_cast<size_t>(state.numel()));
}

void set_generator_state(at::Generator& generator, const std::string& text, const std::string& what) {
  std::vector<uint8_t> bytes = unbase64(text, what);
  at::Tensor state = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  std::memcpy(state.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  try {
    generator.set_state(state);
  } catch (const std::exception& e) {
    fail(what, ": the saved generator state does not fit this generator (", e.what(), ")");
  }
}

}  // namespace fluxtrain::train
