// Exposes the image functions to tests/parity/test_images.py (torch-free, never shipped).
//   image_tool probe IN                      prints {"width", "height", "has_alpha", "format"}
//   image_tool decode IN OUT.raw [--alpha]   writes the pixels; prints {"width", "height", "channels"}
//   image_tool resize IN W H OUT.raw [--alpha]
//   image_tool save-png IN OUT.png [KEY VALUE]...   decodes IN (RGBA if it has alpha) and saves it
//   image_tool text IN.png                   prints the text chunks as [[key, value], ...]
// Errors: the message on stderr, exit status 1.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/image.h"

namespace {

using namespace fluxtrain::data;

void write_raw(const std::string& path, const Image& image) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(image.pixels.data()), static_cast<std::streamsize>(image.pixels.size()));
  if (!out) fluxtrain::fail("cannot write ", path);
  std::cout << nlohmann::json{{"width", image.width}, {"height", image.height}, {"channels", image.channels}}.dump()
            << '\n';
}

int run(const std::vector<std::string>& args) {
  const std::string usage =
      "usage: image_tool probe IN | decode IN OUT.raw [--alpha] | resize IN W H OUT.raw [--alpha] | "
      "save-png IN OUT.png [KEY VALUE]... | text IN.png";
  if (args.size() < 2) fluxtrain::fail(usage);
  const std::string& command = args[0];
  bool alpha = args.back() == "--alpha";
  if (command == "probe") {
    ImageInfo info = probe_image(args[1]);
    std::cout << nlohmann::json{{"width", info.width},
                                {"height", info.height},
                                {"has_alpha", info.has_alpha},
                                {"format", info.format}}
                     .dump()
              << '\n';
  } else if (command == "decode" && args.size() >= 3) {
    write_raw(args[2], load_image(args[1], alpha));
  } else if (command == "resize" && args.size() >= 5) {
    write_raw(args[4], resize_image(load_image(args[1], alpha), std::stoi(args[2]), std::stoi(args[3])));
  } else if (command == "save-png" && args.size() >= 3 && args.size() % 2 == 1) {
    std::vector<std::pair<std::string, std::string>> text;
    for (std::size_t i = 3; i + 1 < args.size(); i += 2) text.emplace_back(args[i], args[i + 1]);
    save_png(args[2], load_image(args[1], probe_image(args[1]).has_alpha), text);
  } else if (command == "text") {
    std::cout << nlohmann::json(read_png_text(args[1])).dump() << '\n';
  } else {
    fluxtrain::fail(usage);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "image_tool: " << e.what() << '\n';
    return 1;
  }
}
