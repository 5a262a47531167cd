// safetensors files as torch tensors: a memory-mapped reader that hands out zero-copy views, and a
// streaming, atomic writer. The format and its validation live in core/safetensors_format.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/safetensors_format.h"

namespace fluxtrain {
class Progress;
}

namespace fluxtrain::safetensors {

at::ScalarType to_scalar_type(Dtype dtype);
// Throws Error for types safetensors cannot hold (complex, unsigned wider than 8 bits, ...).
Dtype from_scalar_type(at::ScalarType type, const std::string& tensor_name);

class Mapping;

// A safetensors file mapped into memory. tensor() returns a CPU tensor that views the mapping (no
// copy; pages are read from disk when touched) and keeps the mapping alive for as long as the tensor
// lives, so the Reader itself may be dropped early. The mapping is private copy-on-write: writing into
// a returned tensor never changes the file.
class Reader {
 public:
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;

  const std::string& path() const;
  const Header& header() const;
  const Metadata& metadata() const { return header().metadata; }
  bool contains(std::string_view name) const { return header().find(name) != nullptr; }

  // Throws Error naming the file if the tensor is absent.
  at::Tensor tensor(std::string_view name) const;
  at::Tensor tensor(const TensorInfo& info) const;

  // Tells the kernel that the pages of this tensor are no longer needed (after it was copied
  // elsewhere), so streaming a large model through memory does not keep all of it resident.
  void release(const TensorInfo& info) const;

 private:
  std::shared_ptr<Mapping> mapping_;
};

// One tensor to write. `produce` is called once, right before the tensor's bytes are written, so a
// writer can convert or fetch tensors one at a time (at most one extra tensor in memory).
struct TensorSource {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  std::function<at::Tensor()> produce;
};

// Writes a safetensors file atomically (temp file, fsync, rename), tensors sorted by element size then
// name so each starts aligned to its own size. A tensor whose produced dtype/shape differs from the
// declared one is an Error. Tensors on another device are copied to the CPU one at a time.
void write(const std::string& path, std::vector<TensorSource> tensors, const Metadata& metadata = {},
           Progress* progress = nullptr);

// Convenience: writes in-memory tensors (views are fine; nothing is copied except to fix layout or
// device, one tensor at a time).
void write(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
           const Metadata& metadata = {});

// SHA-256 of the data area (every tensor's bytes, in file order) that write() would produce for these
// tensors: the "model hash" of kohya's `sshs_model_hash`, which A1111/Forge show for a LoRA; it is
// independent of the metadata, so it can be stored in the file's own metadata.
std::string data_sha256(const std::vector<std::pair<std::string, at::Tensor>>& tensors);

}  // namespace fluxtrain::safetensors
