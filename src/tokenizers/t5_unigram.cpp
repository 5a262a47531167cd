#include "tokenizers/t5_unigram.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/assets.h"
#include "core/error.h"

namespace fluxtrain {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's word-start mark

// The few parts of protobuf's wire format that spiece.model (sentencepiece_model.proto) needs.
class ProtoReader {
 public:
  ProtoReader(std::string_view data, const fs::path& path) : data_(data), path_(path) {}
  bool done() const { return pos_ >= data_.size(); }

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) corrupt("a number runs past the end");
      auto byte = static_cast<unsigned char>(data_[pos_++]);
      value |= uint64_t(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    corrupt("a number is longer than 10 bytes");
  }
  // Reads a field's key; returns the field number and sets `wire_type`.
  uint32_t key(int& wire_type) {
    uint64_t tag = varint();
    wire_type = int(tag & 7);
    return uint32_t(tag >> 3);
  }
  std::string_view bytes() {
    uint64_t size = varint();
    if (size > data_.size() - pos_) corrupt("a field is longer than the data left");
    std::string_view out = data_.substr(pos_, size_t(size));
    pos_ += size_t(size);
    return out;
  }
  float fixed32_float() {
    if (data_.size() - pos_ < 4) corrupt("a float runs past the end");
    uint32_t bits = 0;
    for (int i = 0; i < 4; ++i) bits |= uint32_t(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    pos_ += 4;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); break;
      case 1: advance(8); break;
      case 2: bytes(); break;
      case 5: advance(4); break;
      default: corrupt(cat("unsupported wire type ", wire_type));
    }
  }
  [[noreturn]] void corrupt(const std::string& why) const {
    fail("T5 SentencePiece model ", path_.string(), " is corrupt (", why, " at byte ", pos_,
         "); scripts/fetch_tokenizer_assets.sh recreates it");
  }

 private:
  void advance(size_t n) {
    if (data_.size() - pos_ < n) corrupt("a field runs past the end");
    pos_ += n;
  }
  std::string_view data_;
  const fs::path& path_;
  size_t pos_ = 0;
};

// darts-clone double-array units, as SentencePiece stores its precompiled normaliser.
bool unit_has_leaf(uint32_t unit) {
  return (unit >> 8) & 1;
}
uint32_t unit_value(uint32_t unit) {
  return unit & ((1u << 31) - 1);
}
uint32_t unit_label(uint32_t unit) {
  return unit & ((1u << 31) | 0xFF);
}
uint32_t unit_offset(uint32_t unit) {
  return (unit >> 10) << ((unit & (1u << 9)) >> 6);
}

}  // namespace

T5Tokenizer::T5Tokenizer(const fs::path& spiece_model) : path_(spiece_model) {
  std::ifstream in(spiece_model, std::ios::binary);
  if (!in) {
    fail("T5 SentencePiece model ", spiece_model.string(), " not found or unreadable ",
         "(scripts/fetch_tokenizer_assets.sh recreates it)");
  }
  std::stringstream content;
  content << in.rdbuf();
  const std::string data = content.str();

  enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4 };
  std::string_view charsmap;
  ProtoReader model(data, path_);
  while (!model.done()) {
    int wire = 0;
    uint32_t field = model.key(wire);
    if (field == 1 && wire == 2) {  // ModelProto.pieces
      ProtoReader piece(model.bytes(), path_);
      Piece entry{"", 0.0};
      uint64_t type = kNormal;
      while (!piece.done()) {
        int piece_wire = 0;
        uint32_t piece_field = piece.key(piece_wire);
        if (piece_field == 1 && piece_wire == 2) {
          entry.text = std::string(piece.bytes());
        } else if (piece_field == 2 && piece_wire == 5) {
          entry.score = piece.fixed32_float();  // float32 widened to double, as the reference holds it
        } else if (piece_field == 3 && piece_wire == 0) {
          type = piece.varint();
        } else {
          piece.skip(piece_wire);
        }
      }
      if (type == kUnknown || type == kControl || type == kUserDefined) {
        specials_.push_back({entry.text, int(pieces_.size())});
      }
      pieces_.push_back(std::move(entry));
    } else if (field == 2 && wire == 2) {  // ModelProto.trainer_spec: only unk_id (field 40) matters
      ProtoReader trainer(model.bytes(), path_);
      while (!trainer.done()) {
        int trainer_wire = 0;
        uint32_t trainer_field = trainer.key(trainer_wire);
        if (trainer_field == 40 && trainer_wire == 0) {
          unknown_id_ = int32_t(trainer.varint());
        } else {
          trainer.skip(trainer_wire);
        }
      }
    } else if (field == 3 && wire == 2) {  // ModelProto.normalizer_spec: precompiled_charsmap (field 2)
      ProtoReader normalizer(model.bytes(), path_);
      while (!normalizer.done()) {
        int normalizer_wire = 0;
        uint32_t normalizer_field = normalizer.key(normalizer_wire);
        if (normalizer_field == 2 && normalizer_wire == 2) {
          charsmap = normalizer.bytes();
        } else {
          normalizer.skip(normalizer_wire);
        }
      }
    } else {
      model.skip(wire);
    }
  }
  if (pieces_.empty()) model.corrupt("no pieces");
  // Pieces come first in the file, so a file cut short at a piece boundary parses; what follows them
  // (trainer and normaliser specs) is then missing.
  if (charsmap.empty()) model.corrupt("no precompiled_charsmap normaliser after the pieces: truncated file?");
  if (pieces_.size() + kExtraIds > size_t(kEncoderVocabSize)) {
    fail("T5 SentencePiece model ", path_.string(), " has ", pieces_.size(), " pieces; with the ", kExtraIds,
         " sentinels they exceed the ", kEncoderVocabSize, " embedding rows of Flux's T5 encoder: not T5 v1.1's model");
  }
  if (unknown_id_ < 0 || size_t(unknown_id_) >= pieces_.size())
    model.corrupt(cat("unk_id ", unknown_id_, " out of range"));

  // transformers' T5Tokenizer appends the sentinels with score 0 (they take part in min_score and in
  // the Viterbi search like any piece) and treats them as special tokens.
  for (int i = kExtraIds - 1; i >= 0; --i) {
    std::string sentinel = cat("<extra_id_", i, ">");
    specials_.push_back({sentinel, int(pieces_.size())});
    pieces_.push_back({sentinel, 0.0});
  }
  double min_score = std::numeric_limits<double>::max();
  for (size_t id = 0; id < pieces_.size(); ++id) {
    piece_ids_[pieces_[id].text] = int32_t(id);  // a repeated piece keeps its last id, as the reference
    min_score = std::min(min_score, pieces_[id].score);
  }
  unknown_score_ = min_score - 10.0;
  build_trie();

  if (!charsmap.empty()) {
    if (charsmap.size() < 4) model.corrupt("precompiled_charsmap shorter than its header");
    uint32_t trie_bytes = 0;
    for (int i = 0; i < 4; ++i) trie_bytes |= uint32_t(static_cast<unsigned char>(charsmap[i])) << (8 * i);
    if (trie_bytes % 4 != 0 || trie_bytes > charsmap.size() - 4) model.corrupt("precompiled_charsmap trie size");
    charsmap_units_.resize(trie_bytes / 4);
    for (size_t u = 0; u < charsmap_units_.size(); ++u) {
      uint32_t unit = 0;
      for (int i = 0; i < 4; ++i) unit |= uint32_t(static_cast<unsigned char>(charsmap[4 + 4 * u + i])) << (8 * i);
      charsmap_units_[u] = unit;
    }
    charsmap_strings_ = std::string(charsmap.substr(4 + trie_bytes));
  }
}

T5Tokenizer T5Tokenizer::from_assets() {
  return T5Tokenizer(find_asset("tokenizers/t5/spiece.model"));
}

void T5Tokenizer::build_trie() {
  std::vector<std::pair<std::string_view, int32_t>> sorted;
  sorted.reserve(piece_ids_.size());
  for (const auto& entry : piece_ids_) {
    if (!entry.first.empty()) sorted.emplace_back(entry.first, entry.second);
  }
  std::sort(sorted.begin(), sorted.end());  // bytewise (char_traits<char> compares as unsigned char)
  trie_nodes_.clear();
  trie_edges_.clear();
  build_trie_node(sorted, 0, sorted.size(), 0);
}

int32_t T5Tokenizer::build_trie_node(const std::vector<std::pair<std::string_view, int32_t>>& sorted, size_t begin,
                                     size_t end, size_t depth) {
  auto node = int32_t(trie_nodes_.size());
  trie_nodes_.emplace_back();
  if (begin < end && sorted[begin].first.size() == depth) trie_nodes_[node].id = sorted[begin++].second;
  std::vector<std::pair<size_t, size_t>> groups;  // [begin, end) of the pieces sharing the next byte
  for (size_t i = begin; i < end;) {
    size_t j = i;
    while (j < end && sorted[j].first[depth] == sorted[i].first[depth]) ++j;
    groups.emplace_back(i, j);
    i = j;
  }
  auto first_edge = int32_t(trie_edges_.size());
  trie_edges_.resize(trie_edges_.size() + groups.size());
  trie_nodes_[node].first_edge = first_edge;
  trie_nodes_[node].edge_count = int32_t(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    auto byte = static_cast<uint8_t>(sorted[groups[g].first].first[depth]);
    int32_t child = build_trie_node(sorted, groups[g].first, groups[g].second, depth + 1);
    trie_edges_[size_t(first_edge) + g] = TrieEdge{byte, child};
  }
  return node;
}

std::optional<std::string_view> T5Tokenizer::charsmap_rule(std::string_view chunk) const {
  // darts-clone's common-prefix search, stopped at the first (shortest) key that is a prefix of
  // `chunk`: Hugging Face's Precompiled normaliser uses that key's replacement for the whole chunk.
  if (charsmap_units_.empty()) return std::nullopt;
  uint32_t node = unit_offset(charsmap_units_[0]);
  for (char ch : chunk) {
    auto byte = static_cast<uint8_t>(ch);
    node ^= byte;
    if (node >= charsmap_units_.size()) return std::nullopt;
    uint32_t unit = charsmap_units_[node];
    if (unit_label(unit) != byte) return std::nullopt;
    node ^= unit_offset(unit);
    if (unit_has_leaf(unit)) {
      if (node >= charsmap_units_.size() || unit_value(charsmap_units_[node]) >= charsmap_strings_.size()) {
        fail("T5 SentencePiece model ", path_.string(), " is corrupt (precompiled_charsmap points outside itself); ",
             "scripts/fetch_tokenizer_assets.sh recreates it");
      }
      std::string_view rest = std::string_view(charsmap_strings_).substr(unit_value(charsmap_units_[node]));
      return rest.substr(0, rest.find('\0'));
    }
  }
  return std::nullopt;
}

std::string T5Tokenizer::normalize(std::string_view text) const {
  std::string out;
  out.reserve(text.size());
  for (auto [start, length] : tokenizers::graphemes(text)) {
    std::string_view grapheme = text.substr(start, length);
    if (grapheme.size() < 6) {
      if (std::optional<std::string_view> rule = charsmap_rule(grapheme)) {
        out += *rule;
        continue;
      }
    }
    for (size_t pos = 0; pos < grapheme.size();) {
      size_t next = pos;
      tokenizers::next_code_point(grapheme, next);
      std::string_view code_point = grapheme.substr(pos, next - pos);
      std::optional<std::string_view> rule = charsmap_rule(code_point);
      out += rule ? *rule : code_point;
      pos = next;
    }
  }
  return out;
}

void T5Tokenizer::segment(std::string_view piece, std::vector<int32_t>& out) const {
  // Viterbi over byte positions, visiting only code point starts. Ties keep the earlier candidate.
  struct Best {
    double score = 0;
    int64_t start = -1;  // -1: not reached yet
    int32_t id = 0;
  };
  std::vector<Best> best(piece.size() + 1);
  auto offer = [&](size_t start, size_t end, int32_t id, double score) {
    double candidate = score + best[start].score;
    if (best[end].start < 0 || candidate > best[end].score) best[end] = Best{candidate, int64_t(start), id};
  };
  for (size_t start = 0; start < piece.size();) {
    size_t char_end = start;
    tokenizers::next_code_point(piece, char_end);
    bool has_single_char_piece = false;
    int32_t node = 0;
    for (size_t pos = start; pos < piece.size(); ++pos) {
      const TrieNode& here = trie_nodes_[size_t(node)];
      auto first = trie_edges_.begin() + here.first_edge, last = first + here.edge_count;
      auto byte = static_cast<uint8_t>(piece[pos]);
      auto edge = std::lower_bound(first, last, byte, [](const TrieEdge& e, uint8_t b) { return e.byte < b; });
      if (edge == last || edge->byte != byte) break;
      node = edge->child;
      int32_t id = trie_nodes_[size_t(node)].id;
      if (id >= 0) {
        offer(start, pos + 1, id, pieces_[size_t(id)].score);
        if (pos + 1 == char_end) has_single_char_piece = true;
      }
    }
    if (!has_single_char_piece) offer(start, char_end, unknown_id_, unknown_score_);
    start = char_end;
  }
  // Walk back; a run of unknown code points becomes one token, looked up as a whole (then <unk>).
  std::vector<int32_t> reversed;
  auto push_unknown_run = [&](size_t run_start, size_t run_end) {
    auto found = piece_ids_.find(std::string(piece.substr(run_start, run_end - run_start)));
    reversed.push_back(found == piece_ids_.end() ? unknown_id_ : found->second);
  };
  constexpr size_t kNoRun = std::string_view::npos;
  size_t run_end = kNoRun;
  for (size_t end = piece.size(); end > 0;) {
    const Best& node = best[end];
    if (node.id == unknown_id_) {
      if (run_end == kNoRun) run_end = end;
    } else {
      if (run_end != kNoRun) push_unknown_run(end, run_end);
      run_end = kNoRun;
      reversed.push_back(node.id);
    }
    end = size_t(node.start);
  }
  if (run_end != kNoRun) push_unknown_run(0, run_end);
  out.insert(out.end(), reversed.rbegin(), reversed.rend());
}

std::vector<int32_t> T5Tokenizer::tokenize(std::string_view text) const {
  tokenizers::check_utf8(text, "T5 prompt");
  std::vector<int32_t> ids;
  for (const tokenizers::TextPiece& raw : tokenizers::split_special_tokens(text, specials_)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    std::string normalized = normalize(raw.text);
    std::string word;
    auto finish_word = [&] {
      if (word.empty()) return;
      if (word.compare(0, kMetaspace.size(), kMetaspace) != 0) word.insert(0, kMetaspace);
      // Cut before every "▁" (each piece keeps the mark it starts with).
      size_t piece_start = 0;
      for (size_t at = word.find(kMetaspace, kMetaspace.size()); at != std::string::npos;
           at = word.find(kMetaspace, at + kMetaspace.size())) {
        segment(std::string_view(word).substr(piece_start, at - piece_start), ids);
        piece_start = at;
      }
      segment(std::string_view(word).substr(piece_start), ids);
      word.clear();
    };
    for (size_t pos = 0; pos < normalized.size();) {
      size_t next = pos;
      char32_t c = tokenizers::next_code_point(normalized, next);
      if (tokenizers::is_whitespace(c)) {
        finish_word();
      } else {
        word.append(normalized, pos, next - pos);
      }
      pos = next;
    }
    finish_word();
  }
  return ids;
}

std::vector<int32_t> T5Tokenizer::encode_untruncated(std::string_view text) const {
  std::vector<int32_t> ids = tokenize(text);
  ids.push_back(kEndOfSequence);
  return ids;
}

T5Encoding T5Tokenizer::encode(std::string_view text, int max_length) const {
  if (max_length < 1) fail("T5 max_length is ", max_length, ", expected at least 1 (Flux: 512 dev, 256 schnell)");
  std::vector<int32_t> tokens = tokenize(text);
  size_t keep = std::min(tokens.size(), size_t(max_length - 1));
  T5Encoding encoding;
  encoding.ids.assign(tokens.begin(), tokens.begin() + std::ptrdiff_t(keep));
  encoding.ids.push_back(kEndOfSequence);
  encoding.attention_mask.assign(encoding.ids.size(), 1);
  encoding.ids.resize(size_t(max_length), kPad);
  encoding.attention_mask.resize(size_t(max_length), 0);
  return encoding;
}

}  // namespace fluxtrain
