#include "data/shapes.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numbers>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain::data {

namespace {

struct Point {
  double x, y;
};

// Even-odd rule: a ray to the right crosses the boundary an odd number of times.
bool inside_polygon(const std::vector<Point>& polygon, double x, double y) {
  bool inside = false;
  for (size_t i = 0, j = polygon.size() - 1; i < polygon.size(); j = i++) {
    const Point& a = polygon[i];
    const Point& b = polygon[j];
    if ((a.y > y) != (b.y > y) && x < (b.x - a.x) * (y - a.y) / (b.y - a.y) + a.x) inside = !inside;
  }
  return inside;
}

// Vertices on circles of alternating radii around the origin, the first at the top (before rotation).
std::vector<Point> regular_polygon(int vertices, const std::vector<double>& radii, double angle) {
  std::vector<Point> points;
  for (int i = 0; i < vertices; ++i) {
    const double a = angle - std::numbers::pi / 2 + 2 * std::numbers::pi * i / vertices;
    const double r = radii[static_cast<size_t>(i) % radii.size()];
    points.push_back({r * std::cos(a), r * std::sin(a)});
  }
  return points;
}

uint8_t jittered(uint8_t value, DataRng& rng, int jitter) {
  return static_cast<uint8_t>(std::clamp<int64_t>(value + rng.between(-jitter, jitter), 0, 255));
}

double distance(Rgb a, Rgb b) {
  const double dr = a.r - b.r, dg = a.g - b.g, db = a.b - b.b;
  return std::sqrt(dr * dr + dg * dg + db * db);
}

// A colour by name ("random": any colour), with its jitter; returns the name used in captions.
std::string pick_color(DataRng& rng, const std::vector<std::string>& names, int jitter, Rgb& out, const char* what) {
  if (names.empty()) fail("shape scenes: no ", what, " colours to choose from");
  const std::string& name = names[rng.below(names.size())];
  if (name == "random") {
    out = {static_cast<uint8_t>(rng.below(256)), static_cast<uint8_t>(rng.below(256)),
           static_cast<uint8_t>(rng.below(256))};
    return name;
  }
  const Rgb base = named_color(name);
  out = {jittered(base.r, rng, jitter), jittered(base.g, rng, jitter), jittered(base.b, rng, jitter)};
  return name;
}

}  // namespace

const std::vector<std::string>& shape_names() {
  static const std::vector<std::string> names = {"circle", "square", "triangle", "star", "ring"};
  return names;
}

Shape parse_shape(const std::string& name) {
  const auto& names = shape_names();
  auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) fail("unknown shape '", name, "': expected one of ", join(names));
  return static_cast<Shape>(it - names.begin());
}

const std::vector<NamedColor>& named_colors() {
  static const std::vector<NamedColor> colors = {
      {"red", {215, 40, 40}},     {"green", {40, 170, 70}},    {"blue", {40, 80, 215}},  {"yellow", {235, 205, 40}},
      {"orange", {240, 130, 30}}, {"magenta", {215, 40, 215}}, {"cyan", {40, 200, 210}}, {"white", {245, 245, 245}},
      {"black", {20, 20, 20}},    {"gray", {128, 128, 128}},
  };
  return colors;
}

Rgb named_color(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& c : named_colors()) {
    if (c.name == name) return c.rgb;
    names.push_back(c.name);
  }
  fail("unknown colour '", name, "': expected one of ", join(names), " or random");
}

Image render_scene(const ShapeScene& scene, int width, int height) {
  if (width <= 0 || height <= 0) fail("render_scene: the size must be positive, got ", width, "x", height);
  const double scale = std::min(width, height);
  const double cx = scene.cx * width, cy = scene.cy * height, r = scene.radius * scale;
  std::vector<Point> polygon;
  switch (scene.shape) {
    case Shape::square: polygon = regular_polygon(4, {r}, scene.angle + std::numbers::pi / 4); break;
    case Shape::triangle: polygon = regular_polygon(3, {r}, scene.angle); break;
    case Shape::star: polygon = regular_polygon(10, {r, 0.45 * r}, scene.angle); break;
    case Shape::circle:
    case Shape::ring: break;
  }
  auto covered = [&](double x, double y) {
    const double dx = x - cx, dy = y - cy;
    const double d2 = dx * dx + dy * dy;
    switch (scene.shape) {
      case Shape::circle: return d2 <= 0.85 * 0.85 * r * r;
      case Shape::ring: return d2 <= r * r && d2 >= 0.6 * 0.6 * r * r;
      default: return inside_polygon(polygon, dx, dy);
    }
  };
  constexpr int kSub = 4;  // 4x4 samples per pixel
  Image image;
  image.width = width;
  image.height = height;
  image.channels = 3;
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      int hits = 0;
      for (int sy = 0; sy < kSub; ++sy) {
        for (int sx = 0; sx < kSub; ++sx) hits += covered(x + (sx + 0.5) / kSub, y + (sy + 0.5) / kSub);
      }
      const double a = static_cast<double>(hits) / (kSub * kSub);
      uint8_t* p = &image.pixels[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(std::lround(a * scene.fill.r + (1 - a) * scene.background.r));
      p[1] = static_cast<uint8_t>(std::lround(a * scene.fill.g + (1 - a) * scene.background.g));
      p[2] = static_cast<uint8_t>(std::lround(a * scene.fill.b + (1 - a) * scene.background.b));
    }
  }
  return image;
}

CaptionedScene random_scene(DataRng& rng, const SceneChoices& choices) {
  if (choices.shapes.empty()) fail("shape scenes: no shapes to choose from");
  if (!(choices.min_radius > 0 && choices.min_radius <= choices.max_radius && choices.max_radius < 0.5)) {
    fail("shape scenes: the radius range must satisfy 0 < min <= max < 0.5, got ", choices.min_radius, "..",
         choices.max_radius);
  }
  CaptionedScene s;
  s.shape_name = choices.shapes[rng.below(choices.shapes.size())];
  s.scene.shape = parse_shape(s.shape_name);
  s.background_name = pick_color(rng, choices.backgrounds, choices.jitter, s.scene.background, "background");
  for (int attempt = 0;; ++attempt) {
    s.fill_name = pick_color(rng, choices.fills, choices.jitter, s.scene.fill, "fill");
    const bool same_name = s.fill_name == s.background_name && s.fill_name != "random";
    if (!same_name && distance(s.scene.fill, s.scene.background) >= 60) break;
    if (attempt == 100) fail("shape scenes: every fill colour equals the background colour; add other fill colours");
  }
  s.scene.radius = choices.min_radius + (choices.max_radius - choices.min_radius) * rng.uniform();
  // The centre keeps the shape's circumcircle inside the picture.
  s.scene.cx = s.scene.radius + (1 - 2 * s.scene.radius) * rng.uniform();
  s.scene.cy = s.scene.radius + (1 - 2 * s.scene.radius) * rng.uniform();
  s.scene.angle = 2 * std::numbers::pi * rng.uniform();
  return s;
}

std::string scene_caption(const std::string& caption_template, const CaptionedScene& scene) {
  std::string out;
  for (size_t i = 0; i < caption_template.size();) {
    auto field = [&](const char* name, const std::string& value) {
      const std::string key = std::string("{") + name + "}";
      if (caption_template.compare(i, key.size(), key) != 0) return false;
      out += value;
      i += key.size();
      return true;
    };
    if (field("fill", scene.fill_name) || field("shape", scene.shape_name) ||
        field("background", scene.background_name)) {
      continue;
    }
    out += caption_template[i++];
  }
  return out;
}

std::vector<std::filesystem::path> write_shapes_dataset(const ShapesDataset& dataset) {
  if (dataset.count <= 0) fail("shapes dataset: count must be positive, got ", dataset.count);
  std::filesystem::create_directories(dataset.folder);
  std::vector<std::filesystem::path> paths;
  for (int i = 0; i < dataset.count; ++i) {
    DataRng rng = DataRng::derive({dataset.seed, 0x5ba9e5, static_cast<uint64_t>(i)});
    const CaptionedScene scene = random_scene(rng, dataset.choices);
    char stem[32];
    std::snprintf(stem, sizeof(stem), "shape-%05d", i);
    const std::filesystem::path image = dataset.folder / (std::string(stem) + ".png");
    save_png(image, render_scene(scene.scene, dataset.width, dataset.height));
    write_file_atomic((dataset.folder / (std::string(stem) + ".txt")).string(),
                      scene_caption(dataset.caption_template, scene) + "\n");
    paths.push_back(image);
  }
  return paths;
}

double color_share(const Image& image, Rgb target, double tolerance) {
  if (image.channels < 3) fail("color_share: expected an RGB image");
  const size_t n = static_cast<size_t>(image.width) * image.height;
  if (n == 0) return 0;
  size_t hits = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = &image.pixels[i * image.channels];
    hits += distance({p[0], p[1], p[2]}, target) <= tolerance;
  }
  return static_cast<double>(hits) / static_cast<double>(n);
}

}  // namespace fluxtrain::data
