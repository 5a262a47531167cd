// Writes a TensorBoard event file for tests/parity/test_tfevents.py (never shipped).
// Usage: events_tool DIR [--scalars N] [--image PNG_FILE WIDTH HEIGHT CHANNELS] [--purge-step S] [--hold]
// Writes N scalar events (step i = 1..N: "loss" = 1 / (i + 1), "lr" = 1e-4 * i, "neg" = -i / 3), one
// "big_step" scalar at step 2^40 + 3, then the image as "samples/0" at step N. Prints one JSON line
// {"path": ..., "before": t0, "after": t1} (Unix seconds around the writes). With --hold it then waits
// to be killed, for the test that a killed writer leaves a readable file.
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "core/error.h"
#include "core/tfevents.h"

namespace {

double unix_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  using fluxtrain::fail;
  try {
    if (argc < 2) fail("usage: events_tool DIR [--scalars N] [--image PNG W H C] [--purge-step S] [--hold]");
    std::string dir = argv[1];
    int scalars = 0;
    std::string png_path;
    int width = 0, height = 0, channels = 3;
    std::optional<int64_t> purge_step;
    bool hold = false;
    for (int i = 2; i < argc; ++i) {
      std::string flag = argv[i];
      if (flag == "--scalars" && i + 1 < argc) {
        scalars = std::stoi(argv[++i]);
      } else if (flag == "--image" && i + 4 < argc) {
        png_path = argv[++i];
        width = std::stoi(argv[++i]);
        height = std::stoi(argv[++i]);
        channels = std::stoi(argv[++i]);
      } else if (flag == "--purge-step" && i + 1 < argc) {
        purge_step = std::stoll(argv[++i]);
      } else if (flag == "--hold") {
        hold = true;
      } else {
        fail("events_tool: unknown or incomplete option ", flag);
      }
    }
    double before = unix_now();
    fluxtrain::EventWriter writer(dir, purge_step);
    for (int step = 1; step <= scalars; ++step) {
      writer.add_scalars({{"loss", 1.0 / (step + 1)}, {"lr", 1e-4 * step}, {"neg", -step / 3.0}}, step);
    }
    writer.add_scalar("big_step", 42.0, (int64_t{1} << 40) + 3);
    if (!png_path.empty()) {
      std::ifstream in(png_path, std::ios::binary);
      if (!in) fail("events_tool: cannot read ", png_path);
      std::ostringstream png;
      png << in.rdbuf();
      writer.add_image_png("samples/0", png.str(), width, height, scalars, channels);
    }
    if (!hold) writer.flush();
    double after = unix_now();
    std::cout << nlohmann::json{{"path", writer.path()}, {"before", before}, {"after", after}}.dump() << std::endl;
    while (hold) std::this_thread::sleep_for(std::chrono::seconds(1));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
