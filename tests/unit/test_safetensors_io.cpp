// The mmap Reader and streaming writer on libtorch tensors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/safetensors.h"

namespace fluxtrain::safetensors {
namespace {

namespace fs = std::filesystem;

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("fluxtrain_unit_" + std::to_string(::getpid()) + "_" + name);
}

TEST(SafetensorsIo, RoundTripEveryDtypeBitExact) {
  fs::path path = temp_file("all.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  at::Tensor bits = at::randint(0, 256, {3, 7}, at::kByte);
  for (Dtype d : kAllDtypes) {
    at::ScalarType type = to_scalar_type(d);
    size_t size = dtype_size(d);
    at::Tensor raw = at::randint(0, 256, {3, 7 * static_cast<int64_t>(size)}, at::kByte);
    if (d == Dtype::BOOL) raw = raw.remainder(2);
    tensors.emplace_back(std::string(dtype_name(d)), raw.view(type));
  }
  write(path.string(), tensors, {{"k", "v"}});
  Reader reader(path.string());
  EXPECT_EQ(reader.metadata().at("k"), "v");
  for (const auto& [name, expected] : tensors) {
    at::Tensor got = reader.tensor(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), expected.sizes()) << name;
    EXPECT_TRUE(at::equal(got.view(at::kByte), expected.view(at::kByte))) << name;
  }
  fs::remove(path);
}

TEST(SafetensorsIo, ReaderIsZeroCopyAndOutlivedByTensors) {
  fs::path path = temp_file("view.safetensors");
  write(path.string(), {{"w", at::arange(16, at::kFloat).reshape({4, 4})}});
  at::Tensor a, b;
  {
    Reader reader(path.string());
    a = reader.tensor("w");
    b = reader.tensor("w");
  }
  // Two tensors of the same entry share the mapping's memory: no copy was made.
  EXPECT_EQ(a.data_ptr(), b.data_ptr());
  EXPECT_EQ(a[3][3].item<float>(), 15.0f);
  // Copy-on-write: writing into the view never changes the file.
  a.fill_(-1);
  Reader again(path.string());
  EXPECT_EQ(again.tensor("w")[3][3].item<float>(), 15.0f);
  fs::remove(path);
}

TEST(SafetensorsIo, NonContiguousAndMisaligned) {
  fs::path path = temp_file("layout.safetensors");
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  write(path.string(), {{"t", base.t()}, {"u8", at::ones({3}, at::kByte)}});
  Reader reader(path.string());
  EXPECT_TRUE(at::equal(reader.tensor("t"), base.t().contiguous()));

  // A file from another writer with an F32 tensor at offset 3 (not a multiple of 4): copied, correct.
  std::string json = R"({"b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"f":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  while ((8 + json.size()) % 8) json += ' ';
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  bytes += json + std::string("\1\2\3");
  float values[2] = {1.5f, -2.0f};
  bytes.append(reinterpret_cast<const char*>(values), sizeof values);
  fs::path odd = temp_file("odd.safetensors");
  std::ofstream(odd, std::ios::binary) << bytes;
  Reader odd_reader(odd.string());
  at::Tensor f = odd_reader.tensor("f");
  EXPECT_EQ(f[0].item<float>(), 1.5f);
  EXPECT_EQ(f[1].item<float>(), -2.0f);
  fs::remove(path);
  fs::remove(odd);
}

TEST(SafetensorsIo, StreamingSourcesAreProducedOneAtATime) {
  fs::path path = temp_file("stream.safetensors");
  int produced = 0;
  std::vector<TensorSource> sources;
  for (int i = 0; i < 3; ++i) {
    sources.push_back({"t" + std::to_string(i), Dtype::BF16, {5},
                       [&produced, i] {
                         ++produced;
                         return at::full({5}, i, at::kBFloat16);
                       }});
  }
  write(path.string(), std::move(sources));
  EXPECT_EQ(produced, 3);
  Reader reader(path.string());
  EXPECT_EQ(reader.tensor("t2")[4].item<float>(), 2.0f);

  std::vector<TensorSource> wrong = {{"x", Dtype::F32, {2}, [] { return at::zeros({3}, at::kFloat); }}};
  EXPECT_THROW(write(path.string(), std::move(wrong)), Error);
  // The failed write left the previous complete file in place.
  EXPECT_EQ(Reader(path.string()).header().tensors.size(), 3u);
  fs::remove(path);
}

TEST(SafetensorsIo, MissingTensorAndUnsupportedDtype) {
  fs::path path = temp_file("missing.safetensors");
  write(path.string(), {{"a", at::zeros({1})}});
  Reader reader(path.string());
  try {
    reader.tensor("b");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no tensor 'b'"), std::string::npos);
  }
  EXPECT_THROW(write(path.string(), {{"c", at::zeros({1}, at::kComplexFloat)}}), Error);
  fs::remove(path);
}

}  // namespace
}  // namespace fluxtrain::safetensors
