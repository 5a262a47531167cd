// The demo's procedural pictures: shapes cover the area geometry says, scenes are reproducible from
// their seed, captions name what is drawn, and the colour measure counts what it should.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>

#include "core/error.h"
#include "data/shapes.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using namespace fluxtrain::data;

namespace {

// The share of the picture covered by the fill: pixels blend fill and background linearly, so the mean
// blend factor over the red channel (fill 255, background 0) is the covered area.
double covered_share(const ShapeScene& scene, int size) {
  const Image image = render_scene(scene, size, size);
  double sum = 0;
  for (int i = 0; i < size * size; ++i) sum += image.pixels[static_cast<size_t>(i) * 3] / 255.0;
  return sum / (size * size);
}

ShapeScene centred(Shape shape, double angle = 0.3) {
  ShapeScene s;
  s.shape = shape;
  s.fill = {255, 0, 0};
  s.background = {0, 0, 0};
  s.radius = 0.4;
  s.angle = angle;
  return s;
}

std::string text_of(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST(Shapes, AreasMatchGeometry) {
  const int n = 200;
  const double r = 0.4 * n;
  const double pixels = static_cast<double>(n) * n;
  const double pi = std::numbers::pi;
  // circle: radius 0.85 r; ring: between 0.6 r and r; square: circumradius r (side r * sqrt 2);
  // triangle: equilateral in the circle of radius r; star: 10 vertices at r and 0.45 r.
  const std::vector<std::pair<Shape, double>> expected = {
      {Shape::circle, pi * 0.85 * 0.85 * r * r / pixels},
      {Shape::ring, pi * (1 - 0.36) * r * r / pixels},
      {Shape::square, 2 * r * r / pixels},
      {Shape::triangle, 3 * std::sqrt(3.0) / 4 * r * r / pixels},
      {Shape::star, 5 * r * 0.45 * r * std::sin(pi / 5) / pixels},
  };
  for (const auto& [shape, area] : expected) {
    EXPECT_NEAR(covered_share(centred(shape), n), area, 2e-3) << shape_names()[static_cast<size_t>(shape)];
  }
}

TEST(Shapes, RotationKeepsTheAreaAndMovesThePoints) {
  const double a = covered_share(centred(Shape::star, 0.0), 100);
  const double b = covered_share(centred(Shape::star, 0.5), 100);
  EXPECT_NEAR(a, b, 3e-3);
  EXPECT_NE(render_scene(centred(Shape::star, 0.0), 100, 100).pixels,
            render_scene(centred(Shape::star, 0.5), 100, 100).pixels);
}

TEST(Shapes, EdgesAreAntialiased) {
  const Image image = render_scene(centred(Shape::circle), 64, 64);
  int partial = 0;
  for (size_t i = 0; i < image.pixels.size(); i += 3) partial += image.pixels[i] > 0 && image.pixels[i] < 255;
  EXPECT_GT(partial, 40);  // the rim of a circle of radius ~22 px
}

TEST(Shapes, RandomScenesFollowTheChoices) {
  SceneChoices choices;
  choices.shapes = {"circle", "star"};
  choices.fills = {"red", "white"};
  choices.backgrounds = {"white"};
  for (uint64_t i = 0; i < 200; ++i) {
    DataRng rng = DataRng::derive({7, i});
    const CaptionedScene s = random_scene(rng, choices);
    EXPECT_EQ(s.fill_name, "red");  // white fill on white is never drawn
    EXPECT_TRUE(s.shape_name == "circle" || s.shape_name == "star");
    EXPECT_GE(s.scene.radius, choices.min_radius);
    EXPECT_LE(s.scene.radius, choices.max_radius);
    EXPECT_GE(s.scene.cx - s.scene.radius, -1e-12);
    EXPECT_LE(s.scene.cx + s.scene.radius, 1 + 1e-12);
    EXPECT_LE(std::abs(int(s.scene.fill.r) - 215), choices.jitter);
    EXPECT_EQ(scene_caption("a {fill} {shape} on a {background} background", s),
              "a red " + s.shape_name + " on a white background");
  }
}

TEST(Shapes, DatasetIsReproducibleAndCaptioned) {
  const fs::path dir = fluxtrain::testing::fresh_dir("shapes_dataset");
  ShapesDataset d;
  d.count = 5;
  d.width = 48;
  d.height = 32;
  d.seed = 3;
  d.choices.shapes = {"triangle"};
  d.choices.fills = {"blue"};
  d.choices.backgrounds = {"gray"};
  d.folder = dir / "a";
  const auto first = write_shapes_dataset(d);
  d.folder = dir / "b";
  const auto second = write_shapes_dataset(d);
  ASSERT_EQ(first.size(), 5u);
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(load_image(first[i]).pixels, load_image(second[i]).pixels);
    const Image image = load_image(first[i]);
    EXPECT_EQ(image.width, 48);
    EXPECT_EQ(image.height, 32);
    EXPECT_EQ(text_of(fs::path(first[i]).replace_extension(".txt")), "a blue triangle on a gray background\n");
  }
  d.seed = 4;
  d.folder = dir / "c";
  EXPECT_NE(load_image(write_shapes_dataset(d)[0]).pixels, load_image(first[0]).pixels);
  fs::remove_all(dir);
}

TEST(Shapes, ColorShareCountsNearbyColours) {
  ShapeScene s = centred(Shape::square, 0);
  s.fill = named_color("magenta");
  s.background = named_color("white");
  const Image image = render_scene(s, 100, 100);
  const double share = color_share(image, named_color("magenta"), 90);
  EXPECT_NEAR(share, 2 * 40.0 * 40.0 / (100 * 100), 0.02);  // the square's area, give or take the rim
  EXPECT_EQ(color_share(image, named_color("green"), 90), 0.0);
  // The palette's colours are far enough apart that the demo's measure never confuses them.
  for (const auto& a : named_colors()) {
    if (a.name == "magenta") continue;
    const Rgb m = named_color("magenta");
    const double d = std::hypot(a.rgb.r - m.r, a.rgb.g - m.g, a.rgb.b - m.b);
    EXPECT_GT(d, 90 + 2 * 12 * std::sqrt(3.0)) << a.name;  // tolerance + jitter on both sides
  }
}

TEST(Shapes, UnknownNamesAreNamedErrors) {
  try {
    parse_shape("hexagon");
    FAIL();
  } catch (const fluxtrain::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hexagon"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("circle"), std::string::npos);
  }
  EXPECT_THROW(named_color("mauve"), fluxtrain::Error);
  SceneChoices none;
  DataRng rng(1);
  EXPECT_THROW(random_scene(rng, none), fluxtrain::Error);
}
