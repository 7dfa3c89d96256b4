// A labelled heatmap of a [rows, cols] matrix of weights in [0, 1], written as an SVG.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace micache::cli {

/// Writes `weights` (row-major `[rows, cols]`, values in [0, 1]) to `path` as
/// an SVG: a cell per weight coloured by viridis of sqrt(weight), as the PNG
/// heatmap; `row_labels` (rows of them) down the left and `col_labels` (cols)
/// along the bottom, turned; `title` above; a colour bar on the right with
/// ticks at the weights 0, 0.05, 0.25, 0.5 and 1; axis names "query" and
/// "key". Labels are XML-escaped. Error: Io when the file cannot be written.
void write_heatmap_svg(const std::string& path, const std::vector<float>& weights, std::size_t rows, std::size_t cols,
                       const std::vector<std::string>& row_labels, const std::vector<std::string>& col_labels,
                       const std::string& title);

}  // namespace micache::cli
