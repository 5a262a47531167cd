#include "core/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/sha256.h"

namespace fluxtrain::safetensors {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

at::ScalarType to_scalar_type(Dtype dtype) {
  switch (dtype) {
    case Dtype::F64: return at::kDouble;
    case Dtype::F32: return at::kFloat;
    case Dtype::F16: return at::kHalf;
    case Dtype::BF16: return at::kBFloat16;
    case Dtype::F8_E4M3: return at::kFloat8_e4m3fn;
    case Dtype::F8_E5M2: return at::kFloat8_e5m2;
    case Dtype::I64: return at::kLong;
    case Dtype::I32: return at::kInt;
    case Dtype::I16: return at::kShort;
    case Dtype::I8: return at::kChar;
    case Dtype::U8: return at::kByte;
    case Dtype::BOOL: return at::kBool;
  }
  return at::kFloat;
}

Dtype from_scalar_type(at::ScalarType type, const std::string& tensor_name) {
  for (Dtype d : kAllDtypes) {
    if (to_scalar_type(d) == type) return d;
  }
  fail("tensor '", tensor_name, "' has dtype ", c10::toString(type), ", which safetensors files cannot hold here");
}

class Mapping {
 public:
  explicit Mapping(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno), errno == ENOENT ? " (check the path)" : "");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("cannot stat ", path, ": ", std::strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) {
      ::close(fd);
      fail(path, " is a folder, not a safetensors file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      data_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    }
    ::close(fd);
    if (data_ == MAP_FAILED) {
      data_ = nullptr;
      fail("cannot map ", path, " into memory: ", std::strerror(errno));
    }
    try {
      header_ = parse_buffer(std::string_view(static_cast<const char*>(data_), size_), path);
    } catch (...) {
      unmap();
      throw;
    }
  }
  ~Mapping() { unmap(); }

  const std::string& path() const { return path_; }
  const Header& header() const { return header_; }
  char* data_area() const { return static_cast<char*>(data_) + header_.data_start(); }

 private:
  void unmap() {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = nullptr;
  }
  std::string path_;
  void* data_ = nullptr;
  uint64_t size_ = 0;
  Header header_;
};

Reader::Reader(const std::string& path) : mapping_(std::make_shared<Mapping>(path)) {}
Reader::~Reader() = default;
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&&) noexcept = default;

const std::string& Reader::path() const { return mapping_->path(); }
const Header& Reader::header() const { return mapping_->header(); }

at::Tensor Reader::tensor(std::string_view name) const {
  const TensorInfo* info = header().find(name);
  if (info == nullptr) fail(path(), ": has no tensor '", name, "'");
  return tensor(*info);
}

at::Tensor Reader::tensor(const TensorInfo& info) const {
  char* ptr = mapping_->data_area() + info.begin;
  auto options = at::TensorOptions().dtype(to_scalar_type(info.dtype)).device(at::kCPU);
  size_t align = dtype_size(info.dtype);
  if (reinterpret_cast<uintptr_t>(ptr) % align != 0) {
    // Files from other writers may place a tensor at an offset that is not a multiple of its element
    // size; such a tensor is copied once into aligned memory instead of viewed.
    at::Tensor out = at::empty(info.shape, options);
    std::memcpy(out.data_ptr(), ptr, info.nbytes());
    return out;
  }
  std::shared_ptr<Mapping> keep = mapping_;
  return at::from_blob(
      ptr, info.shape, [keep](void*) mutable { keep.reset(); }, options);
}

void Reader::release(const TensorInfo& info) const {
  // madvise works on whole pages; only pages fully inside this tensor are dropped.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t begin = reinterpret_cast<uintptr_t>(mapping_->data_area() + info.begin);
  uintptr_t end = reinterpret_cast<uintptr_t>(mapping_->data_area() + info.end);
  uintptr_t first = (begin + page - 1) / page * page;
  uintptr_t last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void write(const std::string& path, std::vector<TensorSource> tensors, const Metadata& metadata,
           Progress* progress) {
  std::vector<TensorInfo> layout;
  layout.reserve(tensors.size());
  for (const TensorSource& s : tensors) layout.push_back(TensorInfo{s.name, s.dtype, s.shape, 0, 0});
  assign_offsets(layout, path);
  std::unordered_map<std::string, TensorSource*> by_name;
  for (TensorSource& s : tensors) by_name.emplace(s.name, &s);

  const std::string header = serialize_header(layout, metadata);
  uint64_t total = header.size();
  for (const TensorInfo& info : layout) total += info.nbytes();
  // A full disk is found before the first byte, not half way through a 24 GB file.
  const std::string folder = std::filesystem::path(path).parent_path().string();
  ensure_free_space(folder.empty() ? "." : folder, total, "the file " + path);
  AtomicFile file(path);
  file.expect_size(total);
  file.write(header);
  for (const TensorInfo& info : layout) {
    TensorSource& source = *by_name.at(info.name);
    at::Tensor t = source.produce ? source.produce() : at::Tensor();
    if (!t.defined()) fail(path, ": tensor '", info.name, "' produced no data (internal error)");
    if (t.scalar_type() != to_scalar_type(info.dtype) || t.sizes() != at::IntArrayRef(info.shape)) {
      fail(path, ": tensor '", info.name, "' was declared ", dtype_name(info.dtype), " ", at::IntArrayRef(info.shape),
           " but is ", c10::toString(t.scalar_type()), " ", t.sizes(), " (internal error)");
    }
    if (!t.device().is_cpu()) t = t.to(at::kCPU);
    t = t.contiguous();
    file.write(t.data_ptr(), info.nbytes());
    if (progress != nullptr) progress->advance(static_cast<int64_t>(info.nbytes()));
  }
  file.commit();
}

void write(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
           const Metadata& metadata) {
  std::vector<TensorSource> sources;
  sources.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    at::Tensor t = tensor;
    sources.push_back(TensorSource{name, from_scalar_type(t.scalar_type(), name),
                                   std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
                                   [t] { return t; }});
  }
  write(path, std::move(sources), metadata);
}

std::string data_sha256(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<TensorInfo> layout;
  std::unordered_map<std::string, at::Tensor> by_name;
  for (const auto& [name, tensor] : tensors) {
    layout.push_back(TensorInfo{name, from_scalar_type(tensor.scalar_type(), name),
                                std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()), 0, 0});
    by_name.emplace(name, tensor);
  }
  assign_offsets(layout, "(hash)");
  Sha256 hash;
  for (const TensorInfo& info : layout) {
    at::Tensor t = by_name.at(info.name).to(at::kCPU).contiguous();
    hash.update(t.data_ptr(), info.nbytes());
  }
  return hash.hex_digest();
}

}  // namespace fluxtrain::safetensors
