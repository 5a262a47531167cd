// The safetensors header parser against hand-made valid and corrupt files: each corruption must be
// rejected with its own message naming the file (and the tensor), never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "core/safetensors_format.h"

namespace fluxtrain::safetensors {
namespace {

std::string with_prefix(const std::string& json, uint64_t declared) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((declared >> (8 * i)) & 0xff);
  return out + json;
}

std::string make_file(const std::string& json, size_t data_bytes) {
  return with_prefix(json, json.size()) + std::string(data_bytes, '\x11');
}

// Parses and returns the error message ("" if it parsed).
std::string error_of(const std::string& bytes) {
  try {
    parse_buffer(bytes, "model.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(bytes, ...)                                              \
  do {                                                                        \
    std::string message = error_of(bytes);                                    \
    ASSERT_FALSE(message.empty()) << "expected an error";                     \
    EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message; \
    for (const char* part : {__VA_ARGS__}) {                                  \
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message; \
    }                                                                         \
  } while (0)

TEST(SafetensorsHeader, ParsesValidFile) {
  std::string json =
      R"({"__metadata__":{"format":"pt","note":"x"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},)"
      R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"s":{"dtype":"I64","shape":[],"data_offsets":[28,36]}})";
  Header h = parse_buffer(make_file(json, 36), "model.safetensors");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a");  // data order
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].dtype, Dtype::BF16);
  EXPECT_EQ(h.tensors[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[2].numel(), 1u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.data_size, 36u);
  EXPECT_EQ(h.header_size, json.size());
  EXPECT_EQ(h.parameter_count(), 4u + 6u + 1u);
  ASSERT_NE(h.find("b"), nullptr);
  EXPECT_EQ(h.find("zz"), nullptr);
}

TEST(SafetensorsHeader, EveryDtypeName) {
  for (Dtype d : kAllDtypes) {
    std::string json = std::string(R"({"t":{"dtype":")") + std::string(dtype_name(d)) +
                       R"(","shape":[3],"data_offsets":[0,)" + std::to_string(3 * dtype_size(d)) + "]}}";
    Header h = parse_buffer(make_file(json, 3 * dtype_size(d)), "model.safetensors");
    EXPECT_EQ(h.tensors[0].dtype, d);
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  }
}

TEST(SafetensorsHeader, EmptyAndZeroSizedTensors) {
  Header h = parse_buffer(make_file("{}", 0), "model.safetensors");
  EXPECT_TRUE(h.tensors.empty());
  std::string json = R"({"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},"f":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  Header z = parse_buffer(make_file(json, 2), "model.safetensors");
  EXPECT_EQ(z.tensors.size(), 2u);
}

TEST(SafetensorsHeader, TooSmallFile) { EXPECT_ERROR(std::string("abc"), "3 bytes", "too small"); }

TEST(SafetensorsHeader, HugeHeaderLength) {
  EXPECT_ERROR(with_prefix("{}", uint64_t{1} << 60), "1152921504606846976", "not a safetensors file");
}

TEST(SafetensorsHeader, HeaderLongerThanFile) {
  EXPECT_ERROR(with_prefix("{}", 5000), "5000 bytes", "incomplete download");
}

TEST(SafetensorsHeader, MalformedJson) {
  EXPECT_ERROR(make_file(R"({"a":{"dtype":"F32",)", 0), "not valid JSON");
  EXPECT_ERROR(make_file("[1,2,3]", 0), "must be a JSON object");
}

// A header nested 100,000 levels deep (nlohmann's parser and dump() recurse per level: this used to
// overflow the stack) is a short error naming the file; so is one that nests deep inside a tensor entry.
TEST(SafetensorsHeader, DeepNestingIsAShortError) {
  const size_t depth = 100000;
  for (const std::string& json : {R"({"a":)" + std::string(depth, '[') + std::string(depth, ']') + "}",
                                  R"({"w":{"dtype":"F32","shape":)" + std::string(depth, '[') +
                                      std::string(depth, ']') + R"(,"data_offsets":[0,0]}})",
                                  std::string(depth, '{')}) {
    const std::string message = error_of(make_file(json, 0));
    EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message;
    EXPECT_NE(message.find("nested deeper than 64 levels"), std::string::npos) << message;
    EXPECT_LT(message.size(), 300u) << message;
  }
  // 64 levels is still read (and then refused for what it is, not for its depth).
  const std::string ok = R"({"a":)" + std::string(63, '[') + std::string(63, ']') + "}";
  const std::string message = error_of(make_file(ok, 0));
  EXPECT_EQ(message.find("nested deeper"), std::string::npos) << message;
  EXPECT_NE(message.find("'a'"), std::string::npos) << message;
  // Brackets inside strings do not count.
  EXPECT_EQ(error_of(make_file(R"({"__metadata__":{"k":")" + std::string(1000, '[') + R"("}})", 0)), "");
}

// Errors quote a header's values through a bounded excerpt, never the whole value.
TEST(SafetensorsHeader, QuotedValuesAreBounded) {
  std::string big = "[";
  for (int i = 0; i < 50000; ++i) big += "1,";
  big += "1]";
  const std::string message = error_of(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":)" + big + "}}", 8));
  EXPECT_NE(message.find("[begin, end]"), std::string::npos) << message;
  EXPECT_LT(message.size(), 400u) << message;
  const std::string meta = error_of(make_file(R"({"__metadata__":{"k":)" + big + "}}", 0));
  EXPECT_NE(meta.find("'k'"), std::string::npos) << meta;
  EXPECT_LT(meta.size(), 400u) << meta;
}

TEST(SafetensorsHeader, UnknownDtype) {
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}})", 2), "'w'", "Q4_K", "BF16");
}

TEST(SafetensorsHeader, MissingOrMistypedFields) {
  EXPECT_ERROR(make_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), "'w'", "dtype");
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8), "'w'", "shape");
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "'w'", "non-negative");
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "'w'", "[begin, end]");
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8), "'w'", "shape");
  EXPECT_ERROR(make_file(R"({"w":[1,2]})", 8), "'w'", "must be an object");
  EXPECT_ERROR(make_file(R"({"__metadata__":{"k":5}})", 0), "metadata", "'k'", "string");
}

TEST(SafetensorsHeader, ByteSizeMismatch) {
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"F32","shape":[3,4],"data_offsets":[0,40]}})", 40), "'w'", "48 bytes", "40 bytes");
}

TEST(SafetensorsHeader, ReversedOffsets) {
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", 8), "'w'", "end before they begin");
}

TEST(SafetensorsHeader, ShapeOverflow) {
  EXPECT_ERROR(make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8), "'w'", "impossible shape");
}

TEST(SafetensorsHeader, LyingOffsetsPastTheEnd) {
  // Header says 2 GB of data, file has 16 bytes: the message states both sizes in words.
  std::string json = R"({"w":{"dtype":"F32","shape":[536870912],"data_offsets":[0,2147483648]}})";
  EXPECT_ERROR(make_file(json, 16), "but its header describes 2.1 GB", "incomplete download");
}

TEST(SafetensorsHeader, OverlappingRanges) {
  std::string json = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  EXPECT_ERROR(make_file(json, 24), "'a'", "'b'", "overlap");
}

TEST(SafetensorsHeader, GappedRanges) {
  std::string json = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[32,48]}})";
  EXPECT_ERROR(make_file(json, 48), "16 unused bytes between", "'a'", "'b'");
  EXPECT_ERROR(make_file(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "before the first tensor 'b'");
}

TEST(SafetensorsHeader, TrailingBytes) {
  EXPECT_ERROR(make_file(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 12), "8 bytes follow", "'b'");
}

TEST(SafetensorsHeader, DuplicateNames) {
  std::string json = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  EXPECT_ERROR(make_file(json, 2), "'a' appears twice");
  EXPECT_ERROR(make_file(R"({"__metadata__":{"k":"1","k":"2"}})", 0), "'k' appears twice");
}

TEST(SafetensorsHeader, SerializeRoundTripIsAligned) {
  std::vector<TensorInfo> tensors = {{"small", Dtype::U8, {3}, 0, 0}, {"w", Dtype::F32, {2, 2}, 0, 0},
                                     {"h", Dtype::BF16, {5}, 0, 0}, {"d", Dtype::F64, {1}, 0, 0}};
  assign_offsets(tensors, "out.safetensors");
  // Largest element size first, then by name: every tensor aligned to its own size.
  EXPECT_EQ(tensors[0].name, "d");
  EXPECT_EQ(tensors[1].name, "w");
  EXPECT_EQ(tensors[2].name, "h");
  EXPECT_EQ(tensors[3].name, "small");
  for (const auto& t : tensors) EXPECT_EQ(t.begin % dtype_size(t.dtype), 0u) << t.name;
  Metadata meta = {{"quote\"d", "line\nbreak"}, {"ss_network_dim", "16"}};
  std::string bytes = serialize_header(tensors, meta);
  EXPECT_EQ(bytes.size() % 8, 0u);
  bytes += std::string(tensors.back().end, '\0');
  Header h = parse_buffer(bytes, "out.safetensors");
  EXPECT_EQ(h.metadata, meta);
  ASSERT_EQ(h.tensors.size(), 4u);
  EXPECT_EQ(h.find("h")->shape, (std::vector<int64_t>{5}));
}

TEST(SafetensorsHeader, WriterRejectsDuplicates) {
  std::vector<TensorInfo> tensors = {{"w", Dtype::F32, {2}, 0, 0}, {"w", Dtype::U8, {2}, 0, 0}};
  EXPECT_THROW(assign_offsets(tensors, "out.safetensors"), Error);
}

TEST(SafetensorsHeader, ReadHeaderFromDiskReadsOnlyTheHeader) {
  auto path = std::filesystem::temp_directory_path() / "fluxtrain_format_test.safetensors";
  std::string json = R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})";
  {
    std::ofstream out(path, std::ios::binary);
    out << make_file(json, 4);
  }
  Header h = read_header(path.string());
  EXPECT_EQ(h.tensors.at(0).name, "w");
  EXPECT_NEAR(h.file_size(), std::filesystem::file_size(path), 0);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 2);
  try {
    read_header(path.string());
    FAIL() << "truncated file accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("incomplete download"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
  EXPECT_THROW(read_header(path.string()), Error);
}

TEST(SafetensorsHeader, ScalarConversions) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(half_to_float(0x7c00)));
  EXPECT_EQ(bfloat16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);  // 0.0111.000
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e5m2_to_float(0x3c), 1.0f);
  EXPECT_EQ(fp8_e5m2_to_float(0x7b), 57344.0f);
}

}  // namespace
}  // namespace fluxtrain::safetensors
