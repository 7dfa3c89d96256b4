#include <cstring>

#include "cpu/cpu_backend.hpp"

namespace micache {

void CpuBackend::convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, std::size_t count,
                         Stream stream) {
  require_live(stream);
  if (src_dtype == dst_dtype) {
    std::memmove(dst, src, count * dtype_size(src_dtype));
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    const float value = load_as_f32(src, src_dtype, i);
    switch (dst_dtype) {
      case DType::F32:
        static_cast<float*>(dst)[i] = value;
        break;
      case DType::F16:
        static_cast<std::uint16_t*>(dst)[i] = f32_to_f16(value);
        break;
      case DType::BF16:
        static_cast<std::uint16_t*>(dst)[i] = f32_to_bf16(value);
        break;
      case DType::I32:
      case DType::U8:
      case DType::I64:
        break;  // callers pass float dtypes only
    }
  }
}

}  // namespace micache
