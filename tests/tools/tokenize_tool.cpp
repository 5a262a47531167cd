// Runs both tokenizers for the Python reference tests (never shipped). One request per stdin line,
// {"text": "...", "max_length": 512}; one answer per stdout line:
//   {"clip": [77 ids], "clip_untruncated": [...], "t5": [max_length ids], "t5_mask": [...],
//    "t5_untruncated": [...]}   or   {"error": "..."}.
// Usage: tokenize_tool [--clip FOLDER] [--t5 SPIECE_MODEL]   (default: the shipped assets)
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/error.h"
#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_unigram.h"

int main(int argc, char** argv) {
  using fluxtrain::ClipTokenizer;
  using fluxtrain::T5Tokenizer;
  try {
    std::optional<ClipTokenizer> clip;
    std::optional<T5Tokenizer> t5;
    for (int i = 1; i + 1 < argc; i += 2) {
      std::string flag = argv[i];
      if (flag == "--clip") {
        clip.emplace(argv[i + 1]);
      } else if (flag == "--t5") {
        t5.emplace(argv[i + 1]);
      } else {
        fluxtrain::fail("unknown option ", flag, "; usage: tokenize_tool [--clip FOLDER] [--t5 SPIECE_MODEL]");
      }
    }
    if (!clip) clip.emplace(ClipTokenizer::from_assets());
    if (!t5) t5.emplace(T5Tokenizer::from_assets());

    std::ios::sync_with_stdio(false);
    std::string line;
    while (std::getline(std::cin, line)) {
      nlohmann::json answer;
      try {
        nlohmann::json request = nlohmann::json::parse(line);
        std::string text = request.at("text").get<std::string>();
        int max_length = request.value("max_length", T5Tokenizer::kFluxDevMaxLength);
        answer["clip"] = clip->encode(text);
        answer["clip_untruncated"] = clip->encode_untruncated(text);
        fluxtrain::T5Encoding t5_encoding = t5->encode(text, max_length);
        answer["t5"] = t5_encoding.ids;
        answer["t5_mask"] = t5_encoding.attention_mask;
        answer["t5_untruncated"] = t5->encode_untruncated(text);
      } catch (const std::exception& e) {
        answer = nlohmann::json{{"error", e.what()}};
      }
      std::cout << answer.dump() << '\n';
    }
    std::cout.flush();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "tokenize_tool: " << e.what() << '\n';
    return 1;
  }
}
