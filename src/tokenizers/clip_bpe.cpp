#include "tokenizers/clip_bpe.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/assets.h"
#include "core/error.h"
#include "core/json_guard.h"
#include "tokenizers/unicode.h"

namespace fluxtrain {

namespace fs = std::filesystem;
using tokenizers::next_code_point;

namespace {

constexpr std::string_view kStartOfTextText = "<|startoftext|>";
constexpr std::string_view kEndOfTextText = "<|endoftext|>";
constexpr std::string_view kEndOfWord = "</w>";

std::string read_file(const fs::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fail(what, " ", path.string(), " not found or unreadable; the CLIP-L tokenizer needs vocab.json and merges.txt ",
         "in ", path.parent_path().string(), " (scripts/fetch_tokenizer_assets.sh recreates them)");
  }
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

// GPT-2's reversible map from bytes to printable code points: the printable Latin-1 bytes stand for
// themselves, the other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) become U+0100.. in byte order.
std::string byte_symbol(unsigned char byte) {
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  char32_t code = byte;
  if (!printable(byte)) {
    int index = 0;
    for (int b = 0; b < byte; ++b) index += printable(b) ? 0 : 1;
    code = 256 + index;
  }
  std::string out;
  tokenizers::append_utf8(out, code);
  return out;
}

// One word of CLIP's pattern starting at `pos` of lowercased text, or an empty view where `pos` holds
// whitespace (which the pattern skips). The alternatives are tried in the pattern's order, as a
// backtracking regex engine does; each is greedy and needs no backtracking.
std::string_view next_word(std::string_view text, size_t pos, size_t& end) {
  std::string_view rest = text.substr(pos);
  for (std::string_view literal : {kStartOfTextText, kEndOfTextText}) {
    if (rest.substr(0, literal.size()) == literal) {
      end = pos + literal.size();
      return rest.substr(0, literal.size());
    }
  }
  for (std::string_view contraction : {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}) {
    if (rest.substr(0, contraction.size()) == contraction) {
      end = pos + contraction.size();
      return rest.substr(0, contraction.size());
    }
  }
  size_t next = pos;
  char32_t c = next_code_point(text, next);
  if (tokenizers::is_letter(c)) {
    end = next;
    for (size_t probe = end; probe < text.size() && tokenizers::is_letter(next_code_point(text, probe));) end = probe;
  } else if (tokenizers::is_number(c)) {
    end = next;  // one digit at a time
  } else if (tokenizers::is_whitespace(c)) {
    end = next;
    return {};
  } else {
    end = next;
    for (size_t probe = end; probe < text.size();) {
      char32_t d = next_code_point(text, probe);
      if (tokenizers::is_whitespace(d) || tokenizers::is_letter(d) || tokenizers::is_number(d)) break;
      end = probe;
    }
  }
  return text.substr(pos, end - pos);
}

}  // namespace

ClipTokenizer::ClipTokenizer(const fs::path& folder) {
  fs::path vocab_path = folder / "vocab.json";
  fs::path merges_path = folder / "merges.txt";
  std::string vocab_text = read_file(vocab_path, "CLIP vocabulary");
  check_json_depth(vocab_text, "CLIP vocabulary " + vocab_path.string());
  nlohmann::json vocab = nlohmann::json::parse(vocab_text, nullptr, false);
  if (vocab.is_discarded() || !vocab.is_object()) {
    fail("CLIP vocabulary ", vocab_path.string(), " is not a JSON object of token -> id (corrupt or truncated?); ",
         "scripts/fetch_tokenizer_assets.sh recreates it");
  }
  for (const auto& item : vocab.items()) {
    if (!item.value().is_number_integer() || item.value().get<int64_t>() < 0 ||
        item.value().get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      fail("CLIP vocabulary ", vocab_path.string(), ": token ", json_excerpt(nlohmann::json(item.key())), " has id ",
           json_excerpt(item.value()), ", expected a non-negative integer");
    }
    vocab_[item.key()] = item.value().get<int32_t>();
  }
  for (auto [text, id] : {std::pair{kStartOfTextText, kStartOfText}, std::pair{kEndOfTextText, kEndOfText}}) {
    auto found = vocab_.find(std::string(text));
    if (found == vocab_.end() || found->second != id) {
      fail("CLIP vocabulary ", vocab_path.string(), " does not map ", text, " to ", id, ": not the CLIP-L vocabulary (",
           vocab_.size(), " tokens; CLIP-L has 49408)");
    }
  }
  for (int byte = 0; byte < 256; ++byte) {
    std::string symbol = byte_symbol(static_cast<unsigned char>(byte));
    auto plain = vocab_.find(symbol);
    auto last = vocab_.find(symbol + std::string(kEndOfWord));
    if (plain == vocab_.end() || last == vocab_.end()) {
      fail("CLIP vocabulary ", vocab_path.string(), " lacks the byte symbol for byte ", byte,
           ": not a byte-level BPE vocabulary");
    }
    byte_symbol_[byte] = plain->second;
    byte_symbol_last_[byte] = last->second;
  }

  std::string merges_text = read_file(merges_path, "CLIP merges");
  std::istringstream lines(merges_text);
  std::string line;
  int32_t rank = 0;
  for (int line_number = 1; std::getline(lines, line); ++line_number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
    size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || line.find(' ', space + 1) != std::string::npos ||
        space + 1 == line.size()) {
      fail("CLIP merges ", merges_path.string(), " line ", line_number, " is \"", line,
           "\", expected two symbols separated by one space");
    }
    std::string left = line.substr(0, space), right = line.substr(space + 1);
    auto left_id = vocab_.find(left), right_id = vocab_.find(right), merged_id = vocab_.find(left + right);
    if (left_id == vocab_.end() || right_id == vocab_.end() || merged_id == vocab_.end()) {
      fail("CLIP merges ", merges_path.string(), " line ", line_number, " (\"", line,
           "\") names a symbol that vocab.json lacks: the two files do not belong together");
    }
    // A repeated pair keeps its last rank, as Hugging Face's BPE builder does.
    merges_[pair_key(left_id->second, right_id->second)] = Merge{rank++, merged_id->second};
  }
  if (merges_.empty()) fail("CLIP merges ", merges_path.string(), " holds no merges (empty or truncated file?)");
}

ClipTokenizer ClipTokenizer::from_assets() {
  return ClipTokenizer(find_asset("tokenizers/clip_l/vocab.json").parent_path());
}

std::vector<int32_t> ClipTokenizer::bpe(std::string_view word) const {
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    auto byte = static_cast<unsigned char>(word[i]);
    symbols.push_back(i + 1 == word.size() ? byte_symbol_last_[byte] : byte_symbol_[byte]);
  }
  // Repeatedly merge the pair of lowest rank, every occurrence left to right; merges only ever create
  // pairs of higher rank, so this equals Hugging Face's priority-queue order.
  std::vector<int32_t> merged;
  while (symbols.size() > 1) {
    const Merge* best = nullptr;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto found = merges_.find(pair_key(symbols[i], symbols[i + 1]));
      if (found != merges_.end() && (best == nullptr || found->second.rank < best->rank)) {
        best = &found->second;
        best_at = i;
      }
    }
    if (best == nullptr) break;
    int32_t left = symbols[best_at], right = symbols[best_at + 1];
    merged.clear();
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        merged.push_back(best->merged);
        ++i;
      } else {
        merged.push_back(symbols[i]);
      }
    }
    symbols.swap(merged);
  }
  return symbols;
}

void ClipTokenizer::append_word(std::string_view word, std::vector<int32_t>& out,
                                std::unordered_map<std::string, std::vector<int32_t>>& cache) const {
  auto cached = cache.find(std::string(word));
  if (cached == cache.end()) cached = cache.emplace(std::string(word), bpe(word)).first;
  out.insert(out.end(), cached->second.begin(), cached->second.end());
}

std::vector<int32_t> ClipTokenizer::tokenize(std::string_view text) const {
  tokenizers::check_utf8(text, "CLIP prompt");
  std::vector<int32_t> ids;
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  static const std::vector<tokenizers::SpecialToken> raw_specials = {{std::string(kEndOfTextText), kEndOfText}};
  static const std::vector<tokenizers::SpecialToken> normalized_specials = {
      {std::string(kStartOfTextText), kStartOfText}};
  for (const tokenizers::TextPiece& raw : tokenizers::split_special_tokens(text, raw_specials)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    // The reference also replaces runs of \s by one space between NFC and lowercasing; the words below
    // never contain whitespace, so that step cannot change an id and is left out.
    std::string normalized = tokenizers::lowercase(tokenizers::nfc(raw.text));
    for (const tokenizers::TextPiece& piece : tokenizers::split_special_tokens(normalized, normalized_specials)) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
        continue;
      }
      for (size_t pos = 0, end = 0; pos < piece.text.size(); pos = end) {
        std::string_view word = next_word(piece.text, pos, end);
        if (word.empty()) continue;
        if (word == kStartOfTextText || word == kEndOfTextText) {
          // A special token's text that was not taken as the token (e.g. "<|ENDOFTEXT|>", which is
          // matched only before lowercasing): the byte-level step's GPT-2 pattern splits it again.
          append_word(word.substr(0, 2), ids, cache);
          append_word(word.substr(2, word.size() - 4), ids, cache);
          append_word(word.substr(word.size() - 2), ids, cache);
        } else {
          append_word(word, ids, cache);
        }
      }
    }
  }
  return ids;
}

std::vector<int32_t> ClipTokenizer::encode_untruncated(std::string_view text) const {
  std::vector<int32_t> ids = {kStartOfText};
  std::vector<int32_t> tokens = tokenize(text);
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  ids.push_back(kEndOfText);
  return ids;
}

std::vector<int32_t> ClipTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> tokens = tokenize(text);
  size_t keep = std::min(tokens.size(), size_t(kContextLength - 2));
  std::vector<int32_t> ids = {kStartOfText};
  ids.insert(ids.end(), tokens.begin(), tokens.begin() + std::ptrdiff_t(keep));
  ids.resize(kContextLength, kEndOfText);  // the end-of-text token, then the same id as padding
  return ids;
}

}  // namespace fluxtrain
