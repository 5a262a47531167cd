// T5 v1.1's tokenizer (the one Flux.1 feeds its T5-XXL encoder), id for id equal to transformers'
// T5Tokenizer (Hugging Face tokenizers) built from spiece.model:
//   1. special tokens in the raw text (<pad>, </s>, <unk>, <extra_id_0>..<extra_id_99>) are their ids;
//   2. the rest goes through the model's precompiled SentencePiece normaliser (nmt_nfkc) the way Hugging
//      Face applies it: per grapheme cluster, where a cluster shorter than 6 bytes whose first code
//      points match a rule is replaced whole by that rule's output (so "ｅ\u0301" becomes "e", the
//      accent dropped), and otherwise code point by code point;
//   3. the result is split at White_Space, "▁" is put in front of each word, and words are cut again
//      before every "▁";
//   4. each piece is segmented by the unigram model's Viterbi search (scores summed in double; unknown
//      code points score min_score - 10 and adjacent unknowns fuse into one <unk>).
// encode() appends </s> (1), truncates keeping </s> last and right-pads with <pad> (0): max_length 512
// for Flux.1-dev, 256 for schnell.
// Not libsentencepiece: its normaliser and whitespace handling differ from the reference in the cases
// above, and Flux's text encoders were used with the Hugging Face one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizers/unicode.h"

namespace fluxtrain {

struct T5Encoding {
  std::vector<int32_t> ids;             // max_length ids
  std::vector<int32_t> attention_mask;  // 1 for the tokens and </s>, 0 for padding
};

class T5Tokenizer {
 public:
  static constexpr int32_t kPad = 0;
  static constexpr int32_t kEndOfSequence = 1;
  static constexpr int kExtraIds = 100;            // sentinels <extra_id_99>..<extra_id_0> after the pieces
  static constexpr int kEncoderVocabSize = 32128;  // embedding rows of T5-XXL (ids from 32100 are unused)
  static constexpr int kFluxDevMaxLength = 512;
  static constexpr int kFluxSchnellMaxLength = 256;

  // Reads a SentencePiece unigram model (spiece.model); throws Error naming the file when it is missing
  // or malformed.
  explicit T5Tokenizer(const std::filesystem::path& spiece_model);
  // The shipped model, from find_asset("tokenizers/t5/spiece.model").
  static T5Tokenizer from_assets();

  T5Encoding encode(std::string_view text, int max_length) const;
  // Every token, then </s> (no truncation, no padding).
  std::vector<int32_t> encode_untruncated(std::string_view text) const;
  // The tokens alone.
  std::vector<int32_t> tokenize(std::string_view text) const;

  size_t vocab_size() const { return pieces_.size(); }
  // The text after the precompiled normaliser (step 2), for tests.
  std::string normalize(std::string_view text) const;

 private:
  struct Piece {
    std::string text;
    double score;
  };
  struct TrieNode {
    int32_t first_edge = 0;
    int32_t edge_count = 0;
    int32_t id = -1;  // the piece that ends here, if any
  };
  struct TrieEdge {
    uint8_t byte;
    int32_t child;
  };

  void build_trie();
  int32_t build_trie_node(const std::vector<std::pair<std::string_view, int32_t>>& sorted, size_t begin, size_t end,
                          size_t depth);
  std::optional<std::string_view> charsmap_rule(std::string_view chunk) const;
  void segment(std::string_view piece, std::vector<int32_t>& out) const;

  std::filesystem::path path_;
  std::vector<Piece> pieces_;
  std::unordered_map<std::string, int32_t> piece_ids_;
  std::vector<tokenizers::SpecialToken> specials_;
  int32_t unknown_id_ = 2;
  double unknown_score_ = 0;
  std::vector<TrieNode> trie_nodes_;
  std::vector<TrieEdge> trie_edges_;
  // The precompiled normaliser: a darts-clone double-array trie over UTF-8 byte strings whose values
  // are offsets of NUL-terminated replacements in charsmap_strings_.
  std::vector<uint32_t> charsmap_units_;
  std::string charsmap_strings_;
};

}  // namespace fluxtrain
