#include "cpu/head_mean.hpp"

#include <algorithm>
#include <vector>

#include "cpu/cpu_backend.hpp"

namespace micache {
namespace cpu {

std::size_t head_mean_block_rows(std::size_t n_cols) {
  constexpr std::size_t kBlockBytes = 512 * 1024;
  constexpr std::size_t kMaxBlockRows = 64;
  return std::clamp<std::size_t>(kBlockBytes / (sizeof(float) * std::max<std::size_t>(n_cols, 1)), 1, kMaxBlockRows);
}

}  // namespace cpu

namespace {

// Memory access: rows are taken in blocks; for each block the selected heads
// are visited in ascending order and each head's slice of the block (rows
// contiguous when row_stride == n_cols) is streamed once into the block's f32
// accumulators, so every element's sum runs in head order (the order the CUDA
// kernel uses) while reads stay sequential for col_stride == 1.
template <class Element, class Load>
void head_mean_rows(const HeadMeanView& view, float* out, Load load) {
  const auto* base = static_cast<const Element*>(view.data) + view.offset;
  const float count = static_cast<float>(view.heads.count);
  const std::size_t block_rows = cpu::head_mean_block_rows(view.n_cols);
  for (std::size_t first = 0; first < view.n_rows; first += block_rows) {
    const std::size_t rows = std::min(block_rows, view.n_rows - first);
    float* out_block = out + first * view.n_cols;
    std::fill(out_block, out_block + rows * view.n_cols, 0.0f);
    for (std::uint32_t i = 0; i < view.heads.count; ++i) {
      const std::size_t head = view.heads.listed ? view.heads.index[i] : i;
      for (std::size_t r = 0; r < rows; ++r) {
        const Element* row = base + head * view.head_stride + (first + r) * view.row_stride;
        float* out_row = out_block + r * view.n_cols;
        if (view.col_stride == 1) {
          for (std::size_t c = 0; c < view.n_cols; ++c) out_row[c] += load(row[c]);
        } else {
          for (std::size_t c = 0; c < view.n_cols; ++c) out_row[c] += load(row[c * view.col_stride]);
        }
      }
    }
    for (std::size_t e = 0; e < rows * view.n_cols; ++e) out_block[e] /= count;
  }
}

}  // namespace

void CpuBackend::head_mean(const HeadMeanView& view, float* out, Stream stream) {
  require_live(stream);
  switch (view.dtype) {
    case DType::F16:
      head_mean_rows<std::uint16_t>(view, out, [](std::uint16_t v) { return f16_to_f32(v); });
      return;
    case DType::BF16:
      head_mean_rows<std::uint16_t>(view, out, [](std::uint16_t v) { return bf16_to_f32(v); });
      return;
    case DType::F32:
      head_mean_rows<float>(view, out, [](float v) { return v; });
      return;
    case DType::I32:
    case DType::U8:
    case DType::I64:
      return;  // the caches accept float patterns only
  }
}

// One row of head means at a time (head_mean's order per element), added into
// the chunk's partial sums row by row; each full chunk is then added to `out`.
void CpuBackend::head_mean_column_sums(const HeadMeanView& view, float* out, Stream stream) {
  require_live(stream);
  std::vector<float> row(view.n_cols);
  std::vector<float> chunk(view.n_cols, 0.0f);
  std::fill(out, out + view.n_cols, 0.0f);
  for (std::size_t r = 0; r < view.n_rows; ++r) {
    HeadMeanView one_row = view;
    one_row.offset += r * view.row_stride;
    one_row.n_rows = 1;
    head_mean(one_row, row.data(), Stream{});
    for (std::size_t c = 0; c < view.n_cols; ++c) chunk[c] += row[c];
    if ((r + 1) % kColumnSumChunkRows == 0 || r + 1 == view.n_rows) {
      for (std::size_t c = 0; c < view.n_cols; ++c) out[c] += chunk[c];
      std::fill(chunk.begin(), chunk.end(), 0.0f);
    }
  }
}

}  // namespace micache
