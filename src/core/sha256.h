// SHA-256 (FIPS 180-4), for checksums of shipped data and content-addressed caches.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace fluxtrain {

// Uses the CPU's SHA extensions (x86 SHA-NI, about 10x the portable code: a multi-GiB training state is
// hashed when it is saved and again when it is resumed) when the CPU has them, else portable code; both give
// the same digests (tests/core/test_tokenizers.cpp compares them on random data).
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  std::array<uint8_t, 32> digest();  // finishes; the object is then spent
  std::string hex_digest();

 private:
  void compress(const uint8_t* blocks, size_t count);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Which implementation Sha256 uses: "sha-ni" or "portable". set_sha256_hardware(false) forces the portable
// one (the tests compare the two); true goes back to the CPU's extensions where it has them.
const char* sha256_implementation();
void set_sha256_hardware(bool allowed);

std::string sha256_hex(std::string_view data);
// Streams the file; throws Error naming it when it cannot be read.
std::string sha256_file_hex(const std::filesystem::path& path);

}  // namespace fluxtrain
