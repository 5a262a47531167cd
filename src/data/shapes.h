// Procedural pictures of coloured shapes with captions (torch-free): the data of the embedded demo
// (`fluxtrain demo`) and of the runs that made its tiny base model and autoencoder (docs/demo.md).
//
// A scene is one filled shape (circle, square, triangle, star or ring) of one colour on a plain
// background, drawn with 4x4 supersampling so that edges are anti-aliased as in a real picture. Every
// scene comes from a DataRng stream, so a (seed, index) pair always gives the same picture and caption.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/image.h"
#include "data/rng.h"

namespace fluxtrain::data {

enum class Shape { circle, square, triangle, star, ring };

struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};

struct NamedColor {
  std::string name;
  Rgb rgb;
};

// The shape names as captions use them, and the palette of named colours.
const std::vector<std::string>& shape_names();
Shape parse_shape(const std::string& name);  // Error listing the names when unknown
const std::vector<NamedColor>& named_colors();
Rgb named_color(const std::string& name);  // Error listing the names when unknown

struct ShapeScene {
  Shape shape = Shape::circle;
  Rgb fill;
  Rgb background;
  double cx = 0.5, cy = 0.5;  // centre, as a fraction of the width and height
  double radius = 0.3;        // circumradius, as a fraction of the shorter side
  double angle = 0;           // rotation in radians
};

// Draws the scene into a width x height RGB image.
Image render_scene(const ShapeScene& scene, int width, int height);

// What a random scene may be: shapes and colours by name; a colour named "random" is any RGB colour.
struct SceneChoices {
  std::vector<std::string> shapes;
  std::vector<std::string> fills;
  std::vector<std::string> backgrounds;
  double min_radius = 0.22, max_radius = 0.4;  // fraction of the shorter side
  int jitter = 12;                              // each channel of a named colour moves by up to this
};

struct CaptionedScene {
  ShapeScene scene;
  std::string fill_name, shape_name, background_name;
};

// A scene drawn from `rng`: the fill never equals the background.
CaptionedScene random_scene(DataRng& rng, const SceneChoices& choices);

// `caption_template` with {fill}, {shape} and {background} replaced by the scene's names.
std::string scene_caption(const std::string& caption_template, const CaptionedScene& scene);

struct ShapesDataset {
  std::filesystem::path folder;  // created if needed
  int count = 0;
  int width = 64, height = 64;
  std::uint64_t seed = 0;
  SceneChoices choices;
  std::string caption_template = "a {fill} {shape} on a {background} background";
};

// Writes `count` PNGs (shape-00000.png, ...) each with its caption in a .txt beside it. Returns the paths
// of the images.
std::vector<std::filesystem::path> write_shapes_dataset(const ShapesDataset& dataset);

// The share of an image's pixels whose colour is within `tolerance` (Euclidean distance in 8-bit RGB)
// of `target`: the demo's measure of how much of a sample shows the learned concept.
double color_share(const Image& image, Rgb target, double tolerance);

}  // namespace fluxtrain::data
