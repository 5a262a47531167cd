#include "models/loader.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/stop.h"

namespace fluxtrain::models {
namespace fs = std::filesystem;

namespace {

std::string shape_text(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string list_some(const std::vector<std::string>& items, size_t max_items = 12) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < max_items; ++i) out += "\n  " + items[i];
  if (items.size() > max_items) out += cat("\n  ... and ", items.size() - max_items, " more");
  return out;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path, const std::string& subfolder) {
  Checkpoint c;
  c.path_ = path;
  std::vector<std::string> files;
  if (!fs::exists(path)) fail("model file ", path, " does not exist: check the path (or MODEL_DIR)");
  if (fs::is_directory(path)) {
    fs::path dir = path;
    if (!subfolder.empty() && fs::is_directory(dir / subfolder)) dir /= subfolder;
    std::vector<fs::path> indexes, singles;
    for (const auto& e : fs::directory_iterator(dir)) {
      std::string name = e.path().filename().string();
      if (name.size() > 24 && name.ends_with(".safetensors.index.json")) indexes.push_back(e.path());
      else if (name.ends_with(".safetensors")) singles.push_back(e.path());
    }
    if (indexes.size() == 1) {
      std::ifstream in(indexes[0]);
      std::stringstream text;
      text << in.rdbuf();
      check_json_depth(text.str(), indexes[0].string());
      nlohmann::json index;
      try {
        index = nlohmann::json::parse(text.str());
      } catch (const nlohmann::json::exception& e) {
        fail(indexes[0].string(), ": not valid JSON (", e.what(), ")");
      }
      if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
        fail(indexes[0].string(), ": has no \"weight_map\" object: not a safetensors shard index");
      }
      std::set<std::string> shard_names;
      for (auto& [key, value] : index["weight_map"].items()) shard_names.insert(value.get<std::string>());
      for (const auto& s : shard_names) files.push_back((dir / s).string());
    } else if (indexes.empty() && singles.size() == 1) {
      files.push_back(singles[0].string());
    } else {
      fail(dir.string(), " is a folder, but not one model: expected one *.safetensors.index.json or exactly one "
           ".safetensors file, found ", indexes.size(), " index files and ", singles.size(), " .safetensors files");
    }
  } else {
    files.push_back(path);
  }
  for (const std::string& f : files) {
    c.readers_.push_back(std::make_shared<safetensors::Reader>(f));
    const auto& header = c.readers_.back()->header();
    for (const auto& t : header.tensors) {
      auto [it, inserted] = c.index_.emplace(t.name, Entry{c.readers_.size() - 1, &t});
      if (!inserted) fail(path, ": tensor '", t.name, "' is in two shards (", c.readers_[it->second.reader]->path(), ", ", f, ")");
      c.names_.push_back(t.name);
    }
  }
  return c;
}

const Checkpoint::Entry& Checkpoint::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_, ": has no tensor '", name, "'");
  return it->second;
}

const safetensors::TensorInfo& Checkpoint::info(const std::string& name) const { return *entry(name).info; }

std::string Checkpoint::folder() const {
  return readers_.empty() ? std::string() : fs::path(readers_[0]->path()).parent_path().string();
}

at::Tensor Checkpoint::tensor(const std::string& name) const {
  const Entry& e = entry(name);
  return readers_[e.reader]->tensor(*e.info);
}

void Checkpoint::release(const std::string& name) const {
  const Entry& e = entry(name);
  readers_[e.reader]->release(*e.info);
}

const std::string& Checkpoint::file_of(const std::string& name) const { return readers_[entry(name).reader]->path(); }
const safetensors::Metadata& Checkpoint::metadata() const { return readers_.front()->metadata(); }
const safetensors::Header& Checkpoint::header() const { return readers_.front()->header(); }

std::string find_prefix(const Checkpoint& checkpoint, const std::vector<std::string>& candidates, const std::string& probe,
                        const std::string& what) {
  for (const std::string& prefix : candidates) {
    if (checkpoint.contains(prefix + probe)) return prefix;
  }
  std::string tried;
  for (const auto& p : candidates) tried += (tried.empty() ? "'" : ", '") + p + probe + "'";
  fail(checkpoint.path(), ": is not a ", what, " checkpoint: none of ", tried,
       " is in it (run `fluxtrain inspect ", checkpoint.path(), "` to see what it is)");
}

LoadReport load_strict(torch::nn::Module& module, const Checkpoint& checkpoint, const LoadOptions& options) {
  at::NoGradGuard no_grad;
  std::vector<std::string> missing, mismatched;
  std::set<std::string> consumed;
  LoadReport report;

  struct Target {
    std::string name;
    at::Tensor tensor;
    KeySource source;
  };
  std::vector<Target> targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) targets.push_back({item.key(), item.value(), {}});
  for (const auto& item : module.named_buffers(/*recurse=*/true)) targets.push_back({item.key(), item.value(), {}});

  // Resolve and check everything first, so that one error lists every problem.
  for (Target& t : targets) {
    auto it = options.map.find(t.name);
    t.source = it != options.map.end() ? it->second : KeySource{{t.name}, KeySource::Op::copy};
    std::vector<int64_t> shape;
    bool ok = true;
    for (const std::string& key : t.source.keys) {
      const std::string full = options.prefix + key;
      consumed.insert(full);
      if (!checkpoint.contains(full)) {
        missing.push_back(cat(t.name, " (expected as '", full, "')"));
        ok = false;
        continue;
      }
      const auto& info = checkpoint.info(full);
      if (shape.empty()) {
        shape = info.shape;
      } else if (t.source.op == KeySource::Op::concat && !info.shape.empty()) {
        shape[0] += info.shape[0];
      }
    }
    if (!ok) continue;
    if (at::IntArrayRef(shape) != t.tensor.sizes()) {
      mismatched.push_back(cat(t.name, ": got ", shape_text(shape), " from '", options.prefix, t.source.keys.front(),
                               t.source.keys.size() > 1 ? "' (+ parts)" : "'", ", expected ", shape_text(t.tensor.sizes())));
    }
  }
  if (!missing.empty() || !mismatched.empty()) {
    std::string message = cat(checkpoint.path(), ": does not fit the ", options.what, " it was detected as");
    if (!missing.empty()) message += cat("\n missing tensors (", missing.size(), "):", list_some(missing));
    if (!mismatched.empty()) message += cat("\n shape mismatches (", mismatched.size(), "):", list_some(mismatched));
    message += "\n fix: check that the file is complete and is the model it should be (`fluxtrain inspect` shows what it holds)";
    throw Error(message);
  }

  // Big models show a progress line while they stream in (a 12B model takes a while from disk).
  int64_t total_bytes = 0;
  for (const Target& t : targets) total_bytes += static_cast<int64_t>(t.tensor.nbytes());
  std::unique_ptr<Progress> progress;
  if (total_bytes >= (int64_t{256} << 20)) {
    ProgressOptions po;
    po.unit = "B";
    progress = std::make_unique<Progress>("loading " + options.what, total_bytes, po);
  }
  for (Target& t : targets) {
    stop::check("model loading");  // between tensors: a stop signal need not wait for a 24 GB read
    const auto& keys = t.source.keys;
    switch (t.source.op) {
      case KeySource::Op::copy:
        t.tensor.copy_(checkpoint.tensor(options.prefix + keys[0]));
        break;
      case KeySource::Op::concat: {
        int64_t offset = 0;
        for (const std::string& key : keys) {
          at::Tensor part = checkpoint.tensor(options.prefix + key);
          t.tensor.narrow(0, offset, part.size(0)).copy_(part);
          offset += part.size(0);
        }
        break;
      }
      case KeySource::Op::swap_halves: {
        at::Tensor src = checkpoint.tensor(options.prefix + keys[0]);
        int64_t half = src.size(0) / 2;
        t.tensor.narrow(0, 0, half).copy_(src.narrow(0, half, half));
        t.tensor.narrow(0, half, half).copy_(src.narrow(0, 0, half));
        break;
      }
    }
    for (const std::string& key : keys) checkpoint.release(options.prefix + key);
    ++report.loaded;
    if (progress) progress->advance(static_cast<int64_t>(t.tensor.nbytes()));
  }

  std::set<std::string> ignored;
  for (const auto& key : options.ignore) ignored.insert(options.prefix + key);
  for (const std::string& name : checkpoint.names()) {
    if (name.rfind(options.prefix, 0) != 0 || consumed.count(name) || ignored.count(name)) continue;
    report.unused.push_back(name);
  }
  if (!report.unused.empty()) {
    log::warn(checkpoint.path(), ": ", report.unused.size(), " tensors were not used by the ", options.what, ":",
              list_some(report.unused, 8));
  }
  return report;
}

}  // namespace fluxtrain::models
