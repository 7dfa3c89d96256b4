#include <vector>

#include "cpu/kernels.hpp"

namespace micache::cpu {
namespace {

// Memory access: for each output row, the selected heads are visited in
// ascending order and each head's slice of the row is streamed once into the
// f32 accumulator row, so every element's sum runs in head order (the order
// the CUDA kernel uses) while reads stay sequential for col_stride == 1.
template <class Element, class Load>
void head_mean_rows(const HeadMeanView& view, float* out, Load load) {
  const auto* base = static_cast<const Element*>(view.data) + view.offset;
  const float count = static_cast<float>(view.heads.count);
  for (std::size_t r = 0; r < view.n_rows; ++r) {
    float* out_row = out + r * view.n_cols;
    for (std::size_t c = 0; c < view.n_cols; ++c) out_row[c] = 0.0f;
    for (std::uint32_t i = 0; i < view.heads.count; ++i) {
      const std::size_t head = view.heads.listed ? view.heads.index[i] : i;
      const Element* row = base + head * view.head_stride + r * view.row_stride;
      if (view.col_stride == 1) {
        for (std::size_t c = 0; c < view.n_cols; ++c) out_row[c] += load(row[c]);
      } else {
        for (std::size_t c = 0; c < view.n_cols; ++c) out_row[c] += load(row[c * view.col_stride]);
      }
    }
    for (std::size_t c = 0; c < view.n_cols; ++c) out_row[c] /= count;
  }
}

}  // namespace

void head_mean(const HeadMeanView& view, float* out) {
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
      return;  // the caches accept float patterns only
  }
}

}  // namespace micache::cpu
