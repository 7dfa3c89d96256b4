// dtype.hpp is header-only; this unit checks at compile time that the
// conversions it declares keep the properties the kernels rely on.
#include "micache/dtype.hpp"

namespace micache {

static_assert(dtype_size(DType::BF16) == 2 && dtype_size(DType::F16) == 2);
static_assert(dtype_size(DType::F32) == 4 && dtype_size(DType::I32) == 4);

}  // namespace micache
