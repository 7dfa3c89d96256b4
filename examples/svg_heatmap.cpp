#include "svg_heatmap.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "colour_map.hpp"
#include "micache/error.hpp"

namespace micache::cli {
namespace {

constexpr std::size_t kCell = 28;       // px per cell
constexpr std::size_t kLabelRoom = 90;  // px left of and below the grid for the labels
constexpr std::size_t kTitleRoom = 40;  // px above the grid
constexpr std::size_t kBarWidth = 18;   // px, the colour bar
constexpr std::size_t kBarSteps = 64;   // bands of the colour bar
constexpr double kTicks[] = {0.0, 0.05, 0.25, 0.5, 1.0};

std::string escaped(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string fill(float t) {
  const Rgb c = viridis(t);
  return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b);
}

}  // namespace

void write_heatmap_svg(const std::string& path, const std::vector<float>& weights, std::size_t rows, std::size_t cols,
                       const std::vector<std::string>& row_labels, const std::vector<std::string>& col_labels,
                       const std::string& title) {
  const std::size_t grid_w = cols * kCell, grid_h = rows * kCell;
  const std::size_t left = kLabelRoom, top = kTitleRoom;
  const std::size_t bar_x = left + grid_w + 24;
  const std::size_t width = bar_x + kBarWidth + 70, height = top + grid_h + kLabelRoom;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
      width, height, left + grid_w / 2, escaped(title));
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\n", left + c * kCell,
                         top + r * kCell, kCell, kCell, fill(std::sqrt(weights[r * cols + c])));
    }
  }
  for (std::size_t r = 0; r < rows && r < row_labels.size(); ++r) {
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>\n", left - 6,
                       top + r * kCell + kCell / 2, escaped(row_labels[r]));
  }
  for (std::size_t c = 0; c < cols && c < col_labels.size(); ++c) {
    const std::size_t x = left + c * kCell + kCell / 2, y = top + grid_h + 8;
    svg += fmt::format(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dominant-baseline=\"middle\" transform=\"rotate(-60 {} {})\">{}"
        "</text>\n",
        x, y, x, y, escaped(col_labels[c]));
  }
  svg += fmt::format("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">query</text>\n",
                     top + grid_h / 2, top + grid_h / 2);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">key</text>\n", left + grid_w / 2, height - 6);
  // The colour bar: weight 1 at the top, 0 at the bottom, bands in sqrt(weight) as the cells.
  for (std::size_t i = 0; i < kBarSteps; ++i) {
    const double t = (static_cast<double>(i) + 0.5) / kBarSteps;  // sqrt(weight), bottom up
    const double y0 =
        static_cast<double>(top + grid_h) - static_cast<double>(grid_h) * static_cast<double>(i + 1) / kBarSteps;
    svg += fmt::format("<rect x=\"{}\" y=\"{:.2f}\" width=\"{}\" height=\"{:.2f}\" fill=\"{}\"/>\n", bar_x, y0,
                       kBarWidth, static_cast<double>(grid_h) / kBarSteps + 0.5, fill(static_cast<float>(t)));
  }
  for (const double w : kTicks) {
    const double y = static_cast<double>(top + grid_h) - static_cast<double>(grid_h) * std::sqrt(w);
    svg += fmt::format("<line x1=\"{}\" y1=\"{:.2f}\" x2=\"{}\" y2=\"{:.2f}\" stroke=\"black\"/>\n", bar_x + kBarWidth,
                       y, bar_x + kBarWidth + 4, y);
    svg += fmt::format("<text x=\"{}\" y=\"{:.2f}\" dominant-baseline=\"middle\">{:g}</text>\n", bar_x + kBarWidth + 7,
                       y, w);
  }
  svg += fmt::format(
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 {} {})\">attention weight</text>\n",
      bar_x + kBarWidth + 55, top + grid_h / 2, bar_x + kBarWidth + 55, top + grid_h / 2);
  svg += "</svg>\n";
  std::ofstream file(path, std::ios::trunc);
  file << svg;
  if (!file) throw Error(ErrorCode::Io, path + ": cannot write");
}

}  // namespace micache::cli
