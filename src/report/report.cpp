#include "report/report.h"

#include <cairo.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/strings.h"
#include "core/tfevents.h"
#include "data/image.h"

namespace fluxtrain::report {
namespace fs = std::filesystem;
namespace {

// A cairo object released with its destroy function.
struct Surface {
  cairo_surface_t* s = nullptr;
  explicit Surface(cairo_surface_t* surface) : s(surface) {}
  ~Surface() {
    if (s) cairo_surface_destroy(s);
  }
  Surface(const Surface&) = delete;
  Surface& operator=(const Surface&) = delete;
};
struct Context {
  cairo_t* c;
  explicit Context(cairo_surface_t* surface) : c(cairo_create(surface)) {}
  ~Context() { cairo_destroy(c); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
};

cairo_status_t append_bytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

std::string png_bytes(cairo_surface_t* surface, const std::string& what) {
  std::string out;
  const cairo_status_t status = cairo_surface_write_to_png_stream(surface, append_bytes, &out);
  if (status != CAIRO_STATUS_SUCCESS) fail(what, ": cairo could not encode the PNG (", cairo_status_to_string(status), ")");
  return out;
}

void text_at(cairo_t* cr, double x, double y, const std::string& text, double size, bool bold = false) {
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
  cairo_move_to(cr, x, y);
  cairo_show_text(cr, text.c_str());
}

double text_width(cairo_t* cr, const std::string& text) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, text.c_str(), &e);
  return e.x_advance;
}

// Splits `text` into lines that fit `width` at the current font (at most `max_lines`, the last one cut
// with an ellipsis). Cuts between UTF-8 code points only.
std::vector<std::string> wrap(cairo_t* cr, const std::string& text, double width, size_t max_lines) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream words(text);
  std::string word;
  while (words >> word) {
    const std::string candidate = line.empty() ? word : line + " " + word;
    if (text_width(cr, candidate) <= width || line.empty()) {
      line = candidate;
    } else {
      lines.push_back(line);
      line = word;
    }
  }
  if (!line.empty()) lines.push_back(line);
  if (lines.size() > max_lines) {
    lines.resize(max_lines);
    lines.back() += " …";
  }
  for (auto& l : lines) {
    while (text_width(cr, l) > width && l.size() > 1) {
      size_t cut = l.size() - 1;
      while (cut > 0 && (static_cast<unsigned char>(l[cut]) & 0xC0) == 0x80) --cut;  // a code point's start
      l = l.substr(0, cut);
    }
  }
  return lines;
}

std::string html_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Link text for a file name in an href: percent-encodes what is not unreserved (names stay relative).
std::string href(std::string_view name) {
  std::string out;
  for (unsigned char c : name) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

// "Nice" tick values (1, 2, 5 x 10^k) covering [lo, hi] with about `count` ticks.
std::vector<double> ticks(double lo, double hi, int count) {
  std::vector<double> out;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / count;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push_back(v);
  return out;
}

std::string tick_label(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", std::abs(v) < 1e-12 ? 0.0 : v);
  return text;
}

std::string step_name(const char* prefix, int64_t step) {
  char text[64];
  std::snprintf(text, sizeof text, "%s-%08lld.png", prefix, static_cast<long long>(step));
  return text;
}

}  // namespace

SampleIndex scan_samples(const fs::path& samples_dir, const std::string& name) {
  SampleIndex index;
  std::error_code ec;
  if (!fs::is_directory(samples_dir, ec)) return index;
  for (const auto& entry : fs::directory_iterator(samples_dir, ec)) {
    const std::string file = entry.path().filename().string();
    // {name}_{step:06d}_{idx:02d}_{seed}.png
    if (file.size() <= name.size() + 1 || file.compare(0, name.size() + 1, name + "_") != 0) continue;
    if (entry.path().extension() != ".png") continue;
    const std::string rest = file.substr(name.size() + 1, file.size() - name.size() - 5);
    long long step = 0;
    int idx = 0;
    unsigned long long seed = 0;
    char tail = 0;
    if (std::sscanf(rest.c_str(), "%lld_%d_%llu%c", &step, &idx, &seed, &tail) != 3 || step < 0 || idx < 0) continue;
    index.by_step[step][idx] = entry.path();
  }
  // Each prompt's text from its newest picture.
  for (auto it = index.by_step.rbegin(); it != index.by_step.rend(); ++it) {
    for (const auto& [idx, path] : it->second) {
      if (index.prompts.count(idx)) continue;
      try {
        for (const auto& [key, value] : data::read_png_text(path))
          if (key == "Description") index.prompts[idx] = value;
      } catch (const Error&) {
        // A picture being written or broken: its prompt comes from another one, or stays unnamed.
      }
    }
  }
  return index;
}

std::vector<int64_t> grid_steps(const SampleIndex& samples, int64_t up_to) {
  std::vector<int64_t> all;
  for (const auto& [step, pictures] : samples.by_step)
    if (step <= up_to) all.push_back(step);
  if (all.size() <= static_cast<size_t>(kMaxGridColumns)) return all;
  std::vector<int64_t> picked;
  const double stride = static_cast<double>(all.size() - 1) / (kMaxGridColumns - 1);
  for (int i = 0; i < kMaxGridColumns; ++i) picked.push_back(all[static_cast<size_t>(std::llround(i * stride))]);
  return picked;
}

std::pair<int, int> grid_size(int columns, int rows) {
  return {kGridLabelWidth + columns * (kGridCell + kGridPad) + kGridPad,
          kGridHeader + rows * (kGridCell + kGridPad) + kGridPad};
}

std::optional<std::string> draw_sample_grid(const SampleIndex& samples, int64_t up_to) {
  const std::vector<int64_t> steps = grid_steps(samples, up_to);
  if (steps.empty()) return std::nullopt;
  std::vector<int> rows;  // prompt indices seen in those columns
  for (int64_t step : steps)
    for (const auto& [idx, path] : samples.by_step.at(step)) rows.push_back(idx);
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  const auto [width, height] = grid_size(static_cast<int>(steps.size()), static_cast<int>(rows.size()));
  Surface surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height));
  Context ctx(surface.s);
  cairo_t* cr = ctx.c;
  cairo_set_source_rgb(cr, 0.12, 0.12, 0.14);
  cairo_paint(cr);
  cairo_set_source_rgb(cr, 0.92, 0.92, 0.92);
  for (size_t c = 0; c < steps.size(); ++c) {
    const double x = kGridLabelWidth + static_cast<double>(c) * (kGridCell + kGridPad) + kGridPad;
    text_at(cr, x + 4, kGridHeader - 12, cat("step ", steps[c]), 16, true);
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    const double y = kGridHeader + static_cast<double>(r) * (kGridCell + kGridPad);
    auto prompt = samples.prompts.find(rows[r]);
    cairo_set_source_rgb(cr, 0.92, 0.92, 0.92);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, 14);
    const std::string label = cat("#", rows[r], prompt != samples.prompts.end() ? " " + prompt->second : "");
    const auto lines = wrap(cr, label, kGridLabelWidth - 2 * kGridPad, 12);
    for (size_t l = 0; l < lines.size(); ++l) text_at(cr, kGridPad, y + 20 + 18 * static_cast<double>(l), lines[l], 14);
    for (size_t c = 0; c < steps.size(); ++c) {
      const double x = kGridLabelWidth + static_cast<double>(c) * (kGridCell + kGridPad) + kGridPad;
      const auto& pictures = samples.by_step.at(steps[c]);
      auto it = pictures.find(rows[r]);
      if (it == pictures.end()) continue;
      Surface picture(cairo_image_surface_create_from_png(it->second.c_str()));
      if (cairo_surface_status(picture.s) != CAIRO_STATUS_SUCCESS) {
        log::warn("sample grid: ", it->second.string(), " cannot be read (",
                  cairo_status_to_string(cairo_surface_status(picture.s)), "); its cell stays empty");
        continue;
      }
      const int w = cairo_image_surface_get_width(picture.s), h = cairo_image_surface_get_height(picture.s);
      if (w <= 0 || h <= 0) continue;
      const double scale = static_cast<double>(kGridCell) / std::max(w, h);
      cairo_save(cr);
      cairo_translate(cr, x + (kGridCell - w * scale) / 2, y + (kGridCell - h * scale) / 2);
      cairo_scale(cr, scale, scale);
      cairo_set_source_surface(cr, picture.s, 0, 0);
      cairo_pattern_set_filter(cairo_get_source(cr), scale < 1 ? CAIRO_FILTER_GOOD : CAIRO_FILTER_NEAREST);
      cairo_paint(cr);
      cairo_restore(cr);
    }
  }
  cairo_surface_flush(surface.s);
  return png_bytes(surface.s, "the sample grid");
}

std::vector<MetricsPoint> read_metrics(const fs::path& metrics_jsonl) {
  std::map<int64_t, MetricsPoint> by_step;
  std::ifstream in(metrics_jsonl);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    MetricsPoint p;
    p.step = j["step"].get<int64_t>();
    p.loss = j.contains("loss") && j["loss"].is_number() ? j["loss"].get<double>() : std::numeric_limits<double>::quiet_NaN();
    if (j.contains("validation_loss") && j["validation_loss"].is_number()) p.validation_loss = j["validation_loss"].get<double>();
    by_step[p.step] = p;
  }
  std::vector<MetricsPoint> out;
  for (const auto& [step, p] : by_step) out.push_back(p);
  return out;
}

std::optional<std::string> draw_loss_plot(const std::vector<MetricsPoint>& points, const std::string& title) {
  std::vector<std::pair<double, double>> raw, smooth, validation;
  double ema = 0, weight = 0;
  for (const MetricsPoint& p : points) {
    if (std::isfinite(p.loss)) {
      raw.emplace_back(static_cast<double>(p.step), p.loss);
      // Debiased exponential moving average (TensorBoard's smoothing of 0.9).
      ema = 0.9 * ema + 0.1 * p.loss;
      weight = 0.9 * weight + 0.1;
      smooth.emplace_back(static_cast<double>(p.step), ema / weight);
    }
    if (p.validation_loss && std::isfinite(*p.validation_loss))
      validation.emplace_back(static_cast<double>(p.step), *p.validation_loss);
  }
  if (raw.empty() && validation.empty()) return std::nullopt;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto* series : {&raw, &validation}) {
    for (const auto& [x, y] : *series) {
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + std::max(1e-3, std::abs(y0) * 0.1);
  const double margin = (y1 - y0) * 0.05;
  y0 -= margin;
  y1 += margin;
  const double left = 80, right = kPlotWidth - 24, top = 56, bottom = kPlotHeight - 56;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (right - left); };
  auto py = [&](double y) { return bottom - (y - y0) / (y1 - y0) * (bottom - top); };

  Surface surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, kPlotWidth, kPlotHeight));
  Context ctx(surface.s);
  cairo_t* cr = ctx.c;
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  // Grid lines and tick labels.
  cairo_set_line_width(cr, 1);
  for (double v : ticks(y0, y1, 6)) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, std::round(py(v)) + 0.5);
    cairo_line_to(cr, right, std::round(py(v)) + 0.5);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    const std::string label = tick_label(v);
    cairo_set_font_size(cr, 13);
    text_at(cr, left - 8 - text_width(cr, label), py(v) + 4, label, 13);
  }
  for (double v : ticks(x0, x1, 8)) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, std::round(px(v)) + 0.5, top);
    cairo_line_to(cr, std::round(px(v)) + 0.5, bottom);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    const std::string label = tick_label(v);
    cairo_set_font_size(cr, 13);
    text_at(cr, px(v) - text_width(cr, label) / 2, bottom + 20, label, 13);
  }
  cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
  cairo_rectangle(cr, left + 0.5, top + 0.5, right - left, bottom - top);
  cairo_stroke(cr);
  text_at(cr, left, 32, title, 18, true);
  text_at(cr, (left + right) / 2 - 14, kPlotHeight - 14, "step", 14);

  auto polyline = [&](const std::vector<std::pair<double, double>>& series, double r, double g, double b, double width) {
    if (series.empty()) return;
    cairo_set_source_rgb(cr, r, g, b);
    cairo_set_line_width(cr, width);
    cairo_move_to(cr, px(series[0].first), py(series[0].second));
    for (const auto& [x, y] : series) cairo_line_to(cr, px(x), py(y));
    cairo_stroke(cr);
  };
  polyline(raw, 0.72, 0.78, 0.9, 1);
  polyline(smooth, 0.1, 0.35, 0.8, 2.5);
  polyline(validation, 0.9, 0.45, 0.1, 2.5);
  cairo_set_source_rgb(cr, 0.9, 0.45, 0.1);
  for (const auto& [x, y] : validation) {
    cairo_arc(cr, px(x), py(y), 4, 0, 2 * M_PI);
    cairo_fill(cr);
  }
  // Legend.
  struct Entry {
    const char* name;
    double r, g, b;
    bool shown;
  };
  double lx = right - 420;
  for (const Entry& e : {Entry{"loss", 0.72, 0.78, 0.9, !raw.empty()}, Entry{"smoothed", 0.1, 0.35, 0.8, !raw.empty()},
                         Entry{"validation loss", 0.9, 0.45, 0.1, !validation.empty()}}) {
    if (!e.shown) continue;
    cairo_set_source_rgb(cr, e.r, e.g, e.b);
    cairo_rectangle(cr, lx, 22, 18, 6);
    cairo_fill(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    text_at(cr, lx + 24, 30, e.name, 13);
    cairo_set_font_size(cr, 13);
    lx += 40 + text_width(cr, e.name);
  }
  cairo_surface_flush(surface.s);
  return png_bytes(surface.s, "the loss plot");
}

std::vector<Checkpoint> find_checkpoints(const fs::path& output_dir, const std::string& name, int64_t steps_per_epoch,
                                         int64_t final_step, const std::vector<MetricsPoint>& points) {
  std::map<int64_t, std::optional<double>> validation;
  for (const auto& p : points) validation[p.step] = p.validation_loss;
  std::vector<Checkpoint> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors" || file.compare(0, name.size(), name) != 0) continue;
    const std::string rest = file.substr(name.size(), file.size() - name.size() - 12);
    int64_t step = -1;
    long long n = 0;
    char tail = 0;
    if (rest.empty()) {
      step = final_step > 0 ? final_step : -1;
    } else if (rest.size() == 13 && std::sscanf(rest.c_str(), "-step%lld%c", &n, &tail) == 1) {
      step = n;
    } else if (rest.size() == 7 && std::sscanf(rest.c_str(), "-%lld%c", &n, &tail) == 1 && steps_per_epoch > 0) {
      step = n * steps_per_epoch;
    }
    if (step < 0) continue;
    Checkpoint c{entry.path(), step, std::nullopt};
    if (auto it = validation.find(step); it != validation.end()) c.validation_loss = it->second;
    out.push_back(c);
  }
  std::sort(out.begin(), out.end(), [](const Checkpoint& a, const Checkpoint& b) {
    return a.step != b.step ? a.step < b.step : a.file < b.file;
  });
  return out;
}

fs::path write_report(const fs::path& output_dir, const std::string& name, int64_t steps_per_epoch, int64_t final_step) {
  const std::vector<MetricsPoint> points = read_metrics(output_dir / "metrics.jsonl");
  const std::vector<Checkpoint> checkpoints = find_checkpoints(output_dir, name, steps_per_epoch, final_step, points);
  const SampleIndex samples = scan_samples(output_dir / "samples", name);
  const int64_t last = points.empty() ? final_step : points.back().step;
  const std::optional<std::string> grid = draw_sample_grid(samples, std::numeric_limits<int64_t>::max());
  const std::optional<std::string> plot = draw_loss_plot(points, cat(name, ": loss to step ", last));
  const Checkpoint* best = nullptr;
  for (const auto& c : checkpoints)
    if (c.validation_loss && (!best || *c.validation_loss < *best->validation_loss)) best = &c;

  std::ostringstream h;
  h << "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    << "<title>" << html_escape(name) << ": fluxtrain report</title><style>"
    << "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1280px;padding:0 1em;color:#222}"
    << "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse}"
    << "td,th{padding:.3em .8em;border-bottom:1px solid #eee;text-align:left}.best{background:#fff3d6;font-weight:bold}"
    << "pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>\n"
    << "<h1>" << html_escape(name) << "</h1>\n<p>" << last << " steps";
  if (!points.empty() && std::isfinite(points.back().loss)) h << ", last loss " << points.back().loss;
  h << ".</p>\n<h2>Checkpoints</h2>\n";
  if (best) {
    h << "<p>Best by validation loss: <b>" << html_escape(best->file.filename().string()) << "</b> (step " << best->step
      << ", validation loss " << *best->validation_loss << ").</p>\n";
  } else {
    h << "<p>No validation loss was computed (set validation_split to hold images out), so no checkpoint is "
         "marked as the best.</p>\n";
  }
  h << "<table><tr><th>file</th><th>step</th><th>validation loss</th><th>size</th></tr>\n";
  for (const auto& c : checkpoints) {
    std::error_code ec;
    const auto size = fs::file_size(c.file, ec);
    const std::string file = c.file.filename().string();
    h << "<tr" << (&c == best ? " class=\"best\"" : "") << "><td><a href=\"" << href(file) << "\">"
      << html_escape(file) << "</a></td><td>" << c.step << "</td><td>"
      << (c.validation_loss ? cat(*c.validation_loss) : std::string("—")) << "</td><td>"
      << (ec ? std::string("?") : format_bytes(static_cast<double>(size))) << "</td></tr>\n";
  }
  h << "</table>\n";
  if (grid) h << "<h2>Samples</h2>\n<img alt=\"sample grid\" src=\"data:image/png;base64," << base64_encode(*grid) << "\">\n";
  if (plot) h << "<h2>Loss</h2>\n<img alt=\"loss plot\" src=\"data:image/png;base64," << base64_encode(*plot) << "\">\n";
  std::error_code ec;
  if (fs::is_regular_file(output_dir / "config.toml", ec)) {
    h << "<h2>Config</h2>\n<pre>" << html_escape(read_file_bytes((output_dir / "config.toml").string())) << "</pre>\n";
  }
  h << "<p><small>Written by fluxtrain. Every picture is inside this file; the links open the files beside "
       "it.</small></p>\n</body></html>\n";
  const fs::path path = output_dir / "report.html";
  write_file_atomic(path.string(), h.str());
  return path;
}

ReportWriter::ReportWriter(fs::path output_dir, std::string name)
    : output_dir_(std::move(output_dir)), name_(std::move(name)), thread_([this] { run(); }) {}

ReportWriter::~ReportWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

train::RunListener ReportWriter::listener() {
  return [this](const train::RunEvent& event) {
    if (event.kind != "start" && event.kind != "samples" && event.kind != "model" && event.kind != "end") return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(event);
    }
    wake_.notify_all();
  };
}

void ReportWriter::finish() {
  std::unique_lock<std::mutex> lock(mutex_);
  wake_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void ReportWriter::run() {
  for (;;) {
    train::RunEvent event;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;
      event = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    try {
      handle(event);
    } catch (const std::exception& e) {
      log::warn("the ", event.kind == "end" ? "report" : "pictures", " of step ", event.step, " were not drawn: ", e.what());
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busy_ = false;
    }
    wake_.notify_all();
  }
}

void ReportWriter::handle(const train::RunEvent& event) {
  if (event.kind == "start") {
    steps_per_epoch_ = event.data.value("steps_per_epoch", int64_t{0});
    // A resumed run hides the earlier run's pictures after its step, as the trainer's own events do.
    events_ = std::make_unique<EventWriter>((output_dir_ / "logs" / "report").string(),
                                            event.step > 0 ? std::optional<int64_t>(event.step + 1) : std::nullopt);
    return;
  }
  if (event.kind == "end") {
    if (!event.data.value("interrupted", false)) {
      const fs::path path = write_report(output_dir_, name_, steps_per_epoch_, event.step);
      log::info("report: ", path.string());
    }
    return;
  }
  fs::create_directories(output_dir_ / "grids");
  auto save = [&](const std::string& bytes, const char* prefix, const std::string& tag) {
    const fs::path path = output_dir_ / "grids" / step_name(prefix, event.step);
    write_file_atomic(path.string(), bytes);
    if (events_) {
      const data::ImageInfo info = data::probe_image(path);
      events_->add_image_png(tag, bytes, info.width, info.height, event.step, 3);
      events_->flush();
    }
  };
  if (event.kind == "samples") {
    if (auto grid = draw_sample_grid(scan_samples(output_dir_ / "samples", name_), event.step))
      save(*grid, "samples", "report/samples");
  } else if (event.kind == "model") {
    if (auto plot = draw_loss_plot(read_metrics(output_dir_ / "metrics.jsonl"), cat(name_, ": loss to step ", event.step)))
      save(*plot, "loss", "report/loss");
  }
}

}  // namespace fluxtrain::report
