// A heatmap of a [rows, cols] matrix of weights in [0, 1], written as a PNG.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace micache::cli {

/// Writes `weights` (row-major `[rows, cols]`, values in [0, 1]) to `path` as
/// an 8-bit RGB PNG, each cell a `cell` x `cell` square coloured by the
/// viridis colour map of sqrt(weight) (the square root keeps small weights
/// visible beside a dominant one). Error: Io when the file cannot be written.
void write_heatmap_png(const std::string& path, const std::vector<float>& weights, std::size_t rows,
                       std::size_t cols, std::size_t cell);

}  // namespace micache::cli
