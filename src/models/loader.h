// Strict loading of model parameters from checkpoints, through one conversion layer.
//
// A Checkpoint is one safetensors file or a folder of shards (diffusers layout: an
// `*.safetensors.index.json` weight map), seen as one name -> tensor map of zero-copy views. A KeyMap
// says how each canonical parameter (the module path, which is the BFL/HF key) is produced from
// checkpoint tensors: copied, concatenated along dim 0 (diffusers' split q/k/v), or with its two halves
// swapped (diffusers' [scale, shift]). Names absent from the map are copied from the same name.
//
// load_strict() fills every parameter and buffer of a module: a missing tensor or a shape mismatch is an
// Error listing name, got and expected (all of them, not just the first); tensors of the checkpoint that
// nothing consumed are returned (and logged) as unused. Tensors are copied one at a time into the
// module's own (already allocated) storage, converting dtype on the way (bf16 -> fp8 quantises; fp8 ->
// bf16 upcasts), and each source's pages are released right after, so loading streams from the memory map.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors_format.h"

namespace torch::nn {
class Module;
}

namespace fluxtrain::safetensors {
class Reader;
}

namespace fluxtrain::models {

class Checkpoint {
 public:
  // A .safetensors file; or a folder holding `*.safetensors.index.json` (+ its shards) or exactly one
  // .safetensors file; or a diffusers model folder whose `subfolder` (e.g. "transformer") holds those.
  static Checkpoint open(const std::string& path, const std::string& subfolder = "");

  const std::string& path() const { return path_; }
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const safetensors::TensorInfo& info(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;
  void release(const std::string& name) const;
  // The file a tensor lives in (for messages).
  const std::string& file_of(const std::string& name) const;
  const safetensors::Metadata& metadata() const;
  // The first file's header (single-file checkpoints: the whole header).
  const safetensors::Header& header() const;
  // The folder holding the files, where save_pretrained() puts the model's config.json.
  std::string folder() const;

 private:
  struct Entry {
    size_t reader;
    const safetensors::TensorInfo* info;
  };
  const Entry& entry(const std::string& name) const;
  std::string path_;
  std::vector<std::shared_ptr<safetensors::Reader>> readers_;
  std::map<std::string, Entry> index_;
  std::vector<std::string> names_;
};

struct KeySource {
  enum class Op { copy, concat, swap_halves };
  std::vector<std::string> keys;
  Op op = Op::copy;
};
using KeyMap = std::map<std::string, KeySource>;

struct LoadOptions {
  std::string what;            // "Flux transformer", for messages
  std::string prefix;          // prepended to every checkpoint key ("model.diffusion_model.")
  KeyMap map;                  // canonical name -> source; identity for the rest
  std::vector<std::string> ignore;  // checkpoint keys known to be unused (T5's duplicate embedding)
};

struct LoadReport {
  size_t loaded = 0;
  std::vector<std::string> unused;  // checkpoint keys under the prefix that nothing consumed
};

LoadReport load_strict(torch::nn::Module& module, const Checkpoint& checkpoint, const LoadOptions& options);

// The prefix (from `candidates`, "" included) under which `probe` exists in the checkpoint; Error naming
// the file and what was looked for when none fits.
std::string find_prefix(const Checkpoint& checkpoint, const std::vector<std::string>& candidates,
                        const std::string& probe, const std::string& what);

}  // namespace fluxtrain::models
