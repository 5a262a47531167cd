// One small logging facility: levelled lines on stderr (and optionally a file), safe to call from
// any thread, aware of an active progress bar so that a log line never tears it.
#pragma once

#include <array>
#include <string>

#include "core/enum_names.h"
#include "core/error.h"

namespace fluxtrain::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3, quiet = 4 };
constexpr std::array<EnumName<Level>, 5> enum_names(Level) {
  return {{{"debug", Level::debug}, {"info", Level::info}, {"warn", Level::warn}, {"error", Level::error},
           {"quiet", Level::quiet}}};
}

void set_level(Level level);
Level level();
// Also append every line (all levels at or above the current one) to this file.
void add_file_sink(const std::string& path);
void write(Level level, const std::string& message);

template <typename... Args>
void debug(Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, cat(std::forward<Args>(args)...));
}
template <typename... Args>
void info(Args&&... args) {
  if (level() <= Level::info) write(Level::info, cat(std::forward<Args>(args)...));
}
template <typename... Args>
void warn(Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, cat(std::forward<Args>(args)...));
}
template <typename... Args>
void error(Args&&... args) {
  if (level() <= Level::error) write(Level::error, cat(std::forward<Args>(args)...));
}

namespace detail {
// The progress reporter registers its live status line here so log lines can clear and redraw it.
struct StatusLine {
  virtual ~StatusLine() = default;
  virtual void redraw_locked() = 0;  // called with the terminal lock held
};
void set_status_line(StatusLine* line);  // nullptr to clear
void write_terminal(const std::string& text, bool is_status);
}  // namespace detail

}  // namespace fluxtrain::log
