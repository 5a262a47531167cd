// CLIP-L's tokenizer (the one Flux.1 feeds its CLIP text encoder), id for id equal to transformers'
// CLIPTokenizer (Hugging Face tokenizers) as the Flux pipelines configure it:
//   1. "<|endoftext|>" in the raw text is the id 49407 wherever it stands;
//   2. the rest is NFC-normalised and lowercased code point by code point;
//   3. "<|startoftext|>" in the normalised text is the id 49406 (Flux's tokenizer_config.json marks it
//      `normalized`, so "<|StartOfText|>" counts too);
//   4. words are cut with CLIP's pattern
//      <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//      and whitespace is dropped;
//   5. each word's UTF-8 bytes go through GPT-2's byte-to-unicode map and byte-level BPE, with "</w>"
//      on the last symbol.
// encode() gives the 77 ids Flux uses: 49406, the first 75 tokens, 49407, then 49407 as padding.
// There is no ftfy step: the reference has none unless ftfy is installed, and the project's is not.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fluxtrain {

class ClipTokenizer {
 public:
  static constexpr int32_t kStartOfText = 49406;
  static constexpr int32_t kEndOfText = 49407;  // also the padding id
  static constexpr int kContextLength = 77;

  // Reads `folder`/vocab.json and `folder`/merges.txt; throws Error naming the file that is missing or
  // malformed.
  explicit ClipTokenizer(const std::filesystem::path& folder);
  // The shipped vocabulary, from find_asset("tokenizers/clip_l").
  static ClipTokenizer from_assets();

  // The 77 ids for one prompt, as Flux uses them.
  std::vector<int32_t> encode(std::string_view text) const;
  // 49406, every token, 49407 (no truncation, no padding).
  std::vector<int32_t> encode_untruncated(std::string_view text) const;
  // The tokens alone.
  std::vector<int32_t> tokenize(std::string_view text) const;

  size_t vocab_size() const { return vocab_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t pair_key(int32_t left, int32_t right) { return uint64_t(uint32_t(left)) << 32 | uint32_t(right); }
  void append_word(std::string_view word, std::vector<int32_t>& out,
                   std::unordered_map<std::string, std::vector<int32_t>>& cache) const;
  std::vector<int32_t> bpe(std::string_view word) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_symbol_[256];       // id of a byte's symbol
  int32_t byte_symbol_last_[256];  // the same with "</w>", for a word's last byte
};

}  // namespace fluxtrain
