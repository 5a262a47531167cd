#include "core/safetensors_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/strings.h"

namespace fluxtrain::safetensors {
namespace {

using nlohmann::json;

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  size_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {Dtype::F64, "F64", 8},    {Dtype::F32, "F32", 4},         {Dtype::F16, "F16", 2},
    {Dtype::BF16, "BF16", 2},  {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::F8_E5M2, "F8_E5M2", 1},
    {Dtype::I64, "I64", 8},    {Dtype::I32, "I32", 4},         {Dtype::I16, "I16", 2},
    {Dtype::I8, "I8", 1},      {Dtype::U8, "U8", 1},           {Dtype::BOOL, "BOOL", 1},
};

std::string supported_dtypes() {
  std::string out;
  for (const auto& e : kDtypes) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string range_text(const TensorInfo& t) { return cat("[", t.begin, ", ", t.end, "]"); }

// Reads a required non-negative integer array field.
std::vector<uint64_t> unsigned_array(const json& entry, const char* field, const std::string& file,
                                     const std::string& tensor) {
  auto it = entry.find(field);
  if (it == entry.end()) fail(file, ": tensor '", tensor, "' has no '", field, "' in the header: corrupt header");
  if (!it->is_array()) fail(file, ": tensor '", tensor, "': '", field, "' must be an array, got ", json_excerpt(*it));
  std::vector<uint64_t> out;
  out.reserve(it->size());
  for (const json& v : *it) {
    if (!v.is_number_unsigned()) {
      fail(file, ": tensor '", tensor, "': '", field, "' must hold non-negative integers, got ", json_excerpt(*it));
    }
    out.push_back(v.get<uint64_t>());
  }
  return out;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void pread_all(int fd, void* buffer, size_t size, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(buffer);
  while (size > 0) {
    ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path, ": read failed: ", std::strerror(errno));
    if (n == 0) fail(path, ": file ended while reading it (was it truncated while open?)");
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

}  // namespace

std::string_view dtype_name(Dtype dtype) { return kDtypes[static_cast<size_t>(dtype)].name; }
size_t dtype_size(Dtype dtype) { return kDtypes[static_cast<size_t>(dtype)].size; }

std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const auto& e : kDtypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = index.find(std::string(name));
  return it == index.end() ? nullptr : &tensors[it->second];
}

uint64_t Header::parameter_count() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

uint64_t parse_header_length(const unsigned char prefix[8], uint64_t file_size, const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  if (n > kMaxHeaderSize) {
    fail(file, ": the header length field says ", n, " bytes, over the ", kMaxHeaderSize,
         "-byte limit of safetensors: this is not a safetensors file, or its first bytes are corrupt");
  }
  if (n > file_size - 8) {
    fail(file, ": the header length field says ", n, " bytes but the file is only ", file_size,
         " bytes: incomplete download or not a safetensors file");
  }
  if (n < 2) fail(file, ": the header is ", n, " bytes long, too short for a JSON object: corrupt file");
  return n;
}

Header parse_header(std::string_view text, uint64_t file_size, const std::string& file) {
  Header header;
  header.header_size = text.size();

  // nlohmann keeps the last of duplicate keys silently; the callback sees every key as it is read.
  std::set<std::string> top_keys;
  std::set<std::string> metadata_keys;
  std::string current_top;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (depth == 1) {
        current_top = key;
        if (!top_keys.insert(key).second) {
          fail(file, ": tensor '", key, "' appears twice in the header: the file is corrupt (re-export it)");
        }
      } else if (depth == 2 && current_top == "__metadata__") {
        if (!metadata_keys.insert(key).second) {
          fail(file, ": metadata key '", key, "' appears twice in the header: the file is corrupt");
        }
      }
    }
    return true;
  };
  check_json_depth(text, file + ": the header");
  json root;
  try {
    root = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    fail(file, ": the header is not valid JSON (", shorten(e.what(), 200), "): corrupt or not a safetensors file");
  }
  if (!root.is_object()) fail(file, ": the header must be a JSON object, got ", root.type_name(), ": corrupt file");

  header.tensors.reserve(root.size());
  for (auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(file, ": '__metadata__' must be an object of strings, got ", entry.type_name());
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail(file, ": metadata '", key, "' must be a string, got ", json_excerpt(value),
               " (safetensors metadata is str -> str)");
        }
        header.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object())
      fail(file, ": tensor '", name, "': header entry must be an object, got ", json_excerpt(entry));
    TensorInfo info;
    info.name = name;
    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      fail(file, ": tensor '", name, "' has no string 'dtype' in the header: corrupt header");
    }
    auto dtype = parse_dtype(dtype_it->get<std::string>());
    if (!dtype) {
      fail(file, ": tensor '", name, "' has dtype '", dtype_it->get<std::string>(), "', which fluxtrain does not support (",
           supported_dtypes(), ")");
    }
    info.dtype = *dtype;
    uint64_t bytes = dtype_size(info.dtype);
    bool overflow = false;
    for (uint64_t d : unsigned_array(entry, "shape", file, name)) {
      if (d > static_cast<uint64_t>(INT64_MAX)) overflow = true;
      info.shape.push_back(static_cast<int64_t>(d));
      overflow = overflow || __builtin_mul_overflow(bytes, d, &bytes);
    }
    auto offsets = unsigned_array(entry, "data_offsets", file, name);
    if (offsets.size() != 2)
      fail(file, ": tensor '", name, "': data_offsets must be [begin, end], got ", json_excerpt(entry["data_offsets"]));
    info.begin = offsets[0];
    info.end = offsets[1];
    if (info.end < info.begin) {
      fail(file, ": tensor '", name, "' has data_offsets ", range_text(info), " that end before they begin: corrupt header");
    }
    if (overflow) fail(file, ": tensor '", name, "' has an impossible shape ", shape_text(info.shape), ": corrupt header");
    if (bytes != info.nbytes()) {
      fail(file, ": tensor '", name, "' is ", dtype_name(info.dtype), " ", shape_text(info.shape), " = ", bytes,
           " bytes, but its data_offsets ", range_text(info), " span ", info.nbytes(), " bytes: corrupt header");
    }
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin < expected) {
      fail(file, ": tensors '", previous->name, "' ", range_text(*previous), " and '", t.name, "' ", range_text(t),
           " overlap in the data area: corrupt header");
    }
    if (t.begin > expected) {
      if (previous == nullptr) {
        fail(file, ": ", t.begin, " unused bytes before the first tensor '", t.name, "' ", range_text(t),
             ": corrupt header (data must start at offset 0)");
      }
      fail(file, ": ", t.begin - expected, " unused bytes between tensors '", previous->name, "' ", range_text(*previous),
           " and '", t.name, "' ", range_text(t), ": corrupt header");
    }
    expected = t.end;
    previous = &t;
  }
  header.data_size = expected;
  uint64_t described = header.data_start() + header.data_size;
  if (described > file_size) {
    fail(file, ": file is ", format_bytes(static_cast<double>(file_size)), " (", file_size,
         " bytes) but its header describes ", format_bytes(static_cast<double>(described)), " (", described,
         " bytes): incomplete download? (last tensor '", previous->name, "' ends at byte ", described, ")");
  }
  if (described < file_size) {
    fail(file, ": ", file_size - described, " bytes follow the last tensor's data",
         previous ? " ('" + previous->name + "')" : std::string(), ": corrupt file, or data appended to it");
  }
  header.index.reserve(header.tensors.size());
  for (size_t i = 0; i < header.tensors.size(); ++i) header.index.emplace(header.tensors[i].name, i);
  return header;
}

Header parse_buffer(std::string_view bytes, const std::string& file) {
  if (bytes.size() < 8) {
    fail(file, ": file is ", bytes.size(), " bytes, too small for a safetensors file (8-byte header length + header)");
  }
  uint64_t n = parse_header_length(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), file);
  return parse_header(bytes.substr(8, n), bytes.size(), file);
}

Header read_header(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) {
    fail("cannot open ", path, ": ", std::strerror(errno), errno == ENOENT ? " (check the path)" : "");
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail("cannot stat ", path, ": ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, " is a folder, not a safetensors file");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) fail(path, ": file is ", size, " bytes, too small for a safetensors file (8-byte header length + header)");
  unsigned char prefix[8];
  pread_all(f.fd, prefix, 8, 0, path);
  uint64_t n = parse_header_length(prefix, size, path);
  std::string json(n, '\0');
  pread_all(f.fd, json.data(), n, 8, path);
  return parse_header(json, size, path);
}

std::string serialize_header(const std::vector<TensorInfo>& tensors, const Metadata& metadata) {
  // Written by hand to keep the data order (nlohmann objects sort keys); nlohmann escapes strings.
  std::string out = "{";
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    out += "\"__metadata__\":" + meta.dump();
  }
  for (const TensorInfo& t : tensors) {
    if (out.size() > 1) out += ",";
    out += json(t.name).dump() + ":{\"dtype\":\"" + std::string(dtype_name(t.dtype)) + "\",\"shape\":" +
           shape_text(t.shape) + ",\"data_offsets\":[" + std::to_string(t.begin) + "," + std::to_string(t.end) + "]}";
  }
  out += "}";
  // Pad with spaces so the data area starts 8-byte aligned (8 + N is a multiple of 8).
  while (out.size() % 8 != 0) out.push_back(' ');
  std::string file(8, '\0');
  uint64_t n = out.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return file + out;
}

void assign_offsets(std::vector<TensorInfo>& tensors, const std::string& file) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    TensorInfo& t = tensors[i];
    if (t.name == "__metadata__") fail(file, ": a tensor cannot be named '__metadata__'");
    for (int64_t d : t.shape) {
      if (d < 0) fail(file, ": tensor '", t.name, "' has a negative dimension in ", shape_text(t.shape));
    }
    t.begin = offset;
    t.end = offset + t.numel() * dtype_size(t.dtype);
    offset = t.end;
  }
  std::set<std::string_view> names;
  for (const TensorInfo& t : tensors) {
    if (!names.insert(t.name).second) fail(file, ": tensor '", t.name, "' was given twice to the writer");
  }
}

double read_scalar(const std::string& path, const Header& header, const TensorInfo& info) {
  if (info.numel() != 1) fail(path, ": tensor '", info.name, "' is not a single value (shape ", shape_text(info.shape), ")");
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) fail("cannot open ", path, ": ", std::strerror(errno));
  unsigned char raw[8] = {};
  pread_all(f.fd, raw, info.nbytes(), header.data_start() + info.begin, path);
  auto le = [&](int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | raw[i];
    return v;
  };
  switch (info.dtype) {
    case Dtype::F64: { uint64_t b = le(8); double d; std::memcpy(&d, &b, 8); return d; }
    case Dtype::F32: { uint32_t b = static_cast<uint32_t>(le(4)); float x; std::memcpy(&x, &b, 4); return x; }
    case Dtype::F16: return half_to_float(static_cast<uint16_t>(le(2)));
    case Dtype::BF16: return bfloat16_to_float(static_cast<uint16_t>(le(2)));
    case Dtype::F8_E4M3: return fp8_e4m3_to_float(raw[0]);
    case Dtype::F8_E5M2: return fp8_e5m2_to_float(raw[0]);
    case Dtype::I64: return static_cast<double>(static_cast<int64_t>(le(8)));
    case Dtype::I32: return static_cast<int32_t>(le(4));
    case Dtype::I16: return static_cast<int16_t>(le(2));
    case Dtype::I8: return static_cast<int8_t>(raw[0]);
    case Dtype::U8: return raw[0];
    case Dtype::BOOL: return raw[0] != 0;
  }
  return 0;
}

float half_to_float(uint16_t h) {
  int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  return sign ? -v : v;
}

float bfloat16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float fp8_e4m3_to_float(uint8_t b) {
  // e4m3fn: bias 7, no infinities, NaN = S.1111.111 (spec/flux.md §6).
  int sign = b >> 7, exp = (b >> 3) & 0xf, mant = b & 7;
  float v;
  if (exp == 15 && mant == 7) v = NAN;
  else if (exp == 0) v = std::ldexp(static_cast<float>(mant), -9);
  else v = std::ldexp(static_cast<float>(mant | 8), exp - 10);
  return sign ? -v : v;
}

float fp8_e5m2_to_float(uint8_t b) {
  return half_to_float(static_cast<uint16_t>(b) << 8);  // e5m2 is the top byte of an IEEE half
}

}  // namespace fluxtrain::safetensors
