// Pictures of a run with every checkpoint, drawn with cairo (torch-free, in fluxtrain_core):
//   grids/samples-{step:08}.png  the sample grid: one row per prompt, one column per sampled step so far
//                                (at most kMaxGridColumns, evenly spread, the first and the newest kept),
//                                labelled with the prompts and the steps;
//   grids/loss-{step:08}.png     the loss (raw and smoothed) and the validation loss over the steps;
//   report.html                  at the end of a run (and by `fluxtrain report OUTPUT_PATH`): self-contained
//                                (the pictures inline as data: URLs, no external reference), with the
//                                checkpoints and their validation loss, the best one, the files and the
//                                resolved config.
// The ReportWriter draws them on its own thread from the run's events (train/run_hooks.h), so the
// training never waits for a picture; each picture also goes to TensorBoard (logs/report, a run of its own).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "train/run_hooks.h"

namespace fluxtrain {
class EventWriter;
}

namespace fluxtrain::report {

inline constexpr int kMaxGridColumns = 12;
inline constexpr int kGridCell = 256;        // a thumbnail's longer side, pixels
inline constexpr int kGridLabelWidth = 280;  // the prompts' column
inline constexpr int kGridHeader = 36;       // the steps' row
inline constexpr int kGridPad = 8;
inline constexpr int kPlotWidth = 1200, kPlotHeight = 600;

// The sample PNGs of a run: {name}_{step:06d}_{idx:02d}_{seed}.png in `samples_dir`, by step then prompt
// index; prompts holds each index's prompt text (the PNG's Description chunk).
struct SampleIndex {
  std::map<int64_t, std::map<int, std::filesystem::path>> by_step;
  std::map<int, std::string> prompts;
};
SampleIndex scan_samples(const std::filesystem::path& samples_dir, const std::string& name);

// The steps of the grid's columns: every sampled step <= up_to (all of them when there are at most
// kMaxGridColumns, else evenly spread with the first and the last).
std::vector<int64_t> grid_steps(const SampleIndex& samples, int64_t up_to);
// The grid's size in pixels for `columns` steps and `rows` prompts.
std::pair<int, int> grid_size(int columns, int rows);

// Draws the grid as PNG bytes; nullopt when there is no sample up to `up_to`.
std::optional<std::string> draw_sample_grid(const SampleIndex& samples, int64_t up_to);

// One metrics.jsonl line's numbers the plot and the report use.
struct MetricsPoint {
  int64_t step = 0;
  double loss = 0;
  std::optional<double> validation_loss;
};
// metrics.jsonl's lines (a line that is not a JSON object with a step is skipped; a step logged again, as by
// a resumed run, keeps its last line).
std::vector<MetricsPoint> read_metrics(const std::filesystem::path& metrics_jsonl);

// The loss plot (kPlotWidth x kPlotHeight) as PNG bytes; nullopt when there is no point.
std::optional<std::string> draw_loss_plot(const std::vector<MetricsPoint>& points, const std::string& title);

// A LoRA (or model) file of the run and the step it holds.
struct Checkpoint {
  std::filesystem::path file;
  int64_t step = 0;
  std::optional<double> validation_loss;
};
// {name}-step{N:08}.safetensors (step N), {name}-{E:06}.safetensors (epoch E: E x steps_per_epoch; skipped
// when steps_per_epoch is 0) and {name}.safetensors (final_step; skipped when it is 0), with the validation
// loss logged at their step; sorted by step.
std::vector<Checkpoint> find_checkpoints(const std::filesystem::path& output_dir, const std::string& name,
                                         int64_t steps_per_epoch, int64_t final_step,
                                         const std::vector<MetricsPoint>& points);

// Writes output_dir/report.html (atomically) from what the folder holds; returns its path.
std::filesystem::path write_report(const std::filesystem::path& output_dir, const std::string& name,
                                   int64_t steps_per_epoch, int64_t final_step);

// The run's listener: on "samples" a grid, on "model" a loss plot, on "end" (a finished run) the report.
class ReportWriter {
 public:
  ReportWriter(std::filesystem::path output_dir, std::string name);
  ~ReportWriter();  // finishes the queued pictures
  ReportWriter(const ReportWriter&) = delete;
  ReportWriter& operator=(const ReportWriter&) = delete;

  train::RunListener listener();
  // Waits until every queued picture is drawn.
  void finish();

 private:
  void run();
  void handle(const train::RunEvent& event);

  std::filesystem::path output_dir_;
  std::string name_;
  int64_t steps_per_epoch_ = 0;
  std::unique_ptr<EventWriter> events_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<train::RunEvent> queue_;
  bool busy_ = false;
  bool closing_ = false;
  std::thread thread_;
};

}  // namespace fluxtrain::report
