// Private: the version of the compressed record format, written to and checked in every compressed cache file.
#pragma once

namespace micache::detail {

/// Version of the compressed record format: detail::RecordLayout (record_layout.hpp) and the
/// quantiser's randomness (VectorQuantizer). Written as `micache.quantizer` by every compressed
/// cache's `save`; a file is only read by a build that encodes alike, so change it with either.
inline constexpr const char* kRecordFormat = "turboquant-hadamard2-lloydmax-qjl/1";

}  // namespace micache::detail
