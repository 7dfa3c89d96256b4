// The conformance suite at the Backend seam: every kernel operation of
// micache::Backend, driven with raw descriptors (HeadMeanView, TokenCopy,
// PagedWrite / PagedGather / PagedDecodeAttention, RecordRing / RecordEncode /
// RecordQuery) on every available backend, with memory from the backend's
// own allocate and copies.
//
// On the CPU the answers are compared with plain reference loops written
// here; on any other backend with CpuBackend. Bit for bit wherever backend.hpp
// promises bits (convert, find_non_finite, head_mean, top_k_head_mean,
// head_mean_column_sums, copy_tokens, paged_write, paged_gather,
// encode_records' bytes, decode_records, paged_decode_attention on the CPU;
// a NaN that arithmetic makes matches any NaN, its payload being the
// hardware's); to a tolerance derived from the rounding error of f32 sums
// where it promises agreement "to rounding" (score_records, attend_records)
// or differs by exp and log only (paged_decode_attention elsewhere).
// Every output buffer starts from random bytes (NaNs where compared to a
// tolerance) and is compared whole, with a guard band after its end, so a
// missing or stray write fails too.
//
// One table of named cases per operation; a test is instantiated per (device,
// case) and named `<case>_<device>` (`_cpu`, `_cuda0`, ...): run them all with
// --gtest_filter='BackendConformance*'. Adding an operation adds a table here.
// Boundaries covered:
// - convert (17 cases): every ordered pair of F32/F16/BF16 and the same-type
//   copy, NaN payloads, +-0, +-Inf, subnormals, overflow and rounding ties,
//   misaligned addresses, odd counts, 1 and 0 elements, many blocks;
// - find_non_finite (12): NaN, +Inf, -Inf first / last / several (the first
//   wins) in blocks far apart, the largest finite and subnormal values,
//   misaligned addresses, 1 and 0 elements;
// - head_mean (25): one row, whole pattern, key column (col_stride > 1) and
//   transposed views; listed heads (one, some, kMaxListedHeads) and all heads
//   (more than kMaxListedHeads); one-row heads and columns past CUDA's head
//   chunk and column tile; NaN, +-0 and +-Inf; aligned and misaligned vector
//   loads (offset 1 and 3, odd n_cols, padded rows and heads, odd F16 / BF16
//   rows); 0 rows, 0 columns, one element, many blocks;
// - top_k_head_mean (29): k = 1, kWarpTopKMax - 1, kWarpTopKMax,
//   kWarpTopKMax + 1, 1024, 1025, and k = n_cols on both paths; ties, NaN
//   (rows with fewer numbers than k), +-Inf; one row split into CUDA's
//   segments; listed heads, key column, misaligned odd rows, long rows, many
//   rows, 0 rows;
// - head_mean_column_sums (15): rows kColumnSumChunkRows - 1, +0, +1, 2x, 2x + 1
//   and several chunks; specials, listed heads, misaligned, padded, transposed
//   and wide views; 0 rows (all sums 0) and 0 columns;
// - copy_tokens (19): source and destination ring wrap-around, a whole-ring
//   rotation, gathers (src_tokens) shuffled and with repeats, one and two
//   buffers, token sizes 1, 2, 6, 12, 16, 18, 64, 256 and 8192 bytes,
//   misaligned buffer addresses, 0 tokens and 0 planes;
// - paged_write (22), paged_gather (18): NHD and HND; F32, F16, BF16;
//   head_dim 1, 3, 64, 128, 129; page_size 1, 16 and 3 (not a power of two,
//   which the descriptor allows); negative slots (-1, INT64_MIN, -page_size,
//   every slot), the pool's last slot in every write and writes filling the
//   last page; token strides past kv_heads * head_dim (a fused QKV slice, an
//   odd stride) and misaligned inputs and outputs (narrower CUDA words);
//   gathers ending mid-page and on a page boundary, one token, 1100 tokens;
//   0 tokens; a write leaves every byte outside its slots' rows as it was;
// - encode_records (28), decode_records (18): bits 1..8, key (QJL sign bits,
//   m not a multiple of 8) and value records, F32/F16/BF16 inputs with offsets
//   and padded strides, odd head_dim (3, 5, 77), the smallest (2) and the
//   largest head_dim KvCacheConfig accepts (131070), 4096 and 8192, CUDA's
//   work space in shared memory at its largest p and in global memory at its
//   smallest, heads * tokens = 8191, 8192 and 8193 (8192: the most vectors a
//   CUDA launch with global work space keeps in flight; 8193 also with global
//   work space for encode), ring wrap-around, zero, huge and subnormal
//   vectors, 0 tokens;
// - score_records (23), attend_records (19): tokens 1, 127, 128, 129 (CUDA
//   score tiles) and 1, 255, 256, 257, 511, 513 (attend chunks, every
//   backend's flash-decoding split), MSE and QJL estimates, GQA and MQA
//   groups, ring wrap-around, records on both sides of the size CUDA stages
//   in shared memory, bits 1..8 (value bits apart from key bits), odd head_dim
//   with misaligned queries, F32/F16/BF16 queries, head_dim 4096, 8192
//   (shared and global query work space) and 131070, 0 tokens (score);
// - paged_decode_attention (22): NHD and HND; F32, F16, BF16; GQA groups 1,
//   2 and 4; head_dim 1, 64, 128, 129; page_size 1 and 16; requests ending
//   mid-page and on a page boundary, one token, empty requests (zeros, lse
//   -inf) alone and between others, batches of different lengths, CUDA's
//   score chunk (kPagedAttentionChunkTokens) -1/+0/+1 and 2x + 1, a padded
//   query stride, no lse, no requests; every slot no request holds is NaN.
// 267 cases in all, plus two checks that the boundary cases sit where they
// claim (KvCacheConfig's largest head_dim, CUDA's staging thresholds).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "conformance_support.hpp"
#include "cuda/record_plan.hpp"
#include "cuda/row_split.hpp"
#include "micache/backend/detail/attend_split.hpp"
#include "micache/backend/detail/estimators.hpp"
#include "micache/backend/detail/record_codec.hpp"
#include "micache/backend/detail/record_layout.hpp"
#include "micache/backend/detail/rotation.hpp"
#include "micache/backend/detail/top_k_key.hpp"
#include "quantiser_tables.hpp"

namespace micache::testing::conformance {
namespace {

Backend& cpu_backend() { return backend_for(Device::cpu()); }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Where the backends change their plan, cases sit on both sides. The CUDA
// kernels' thresholds come from their host-safe plan headers (cuda/*.hpp).

/// The largest head_dim KvCacheConfig::validate accepts (head_dim / 2 <= 65535).
constexpr std::uint32_t kLargestHeadDim = 131070;

/// The smallest head_dim whose CUDA encode work space is in global memory (p = 2048).
constexpr std::uint32_t kGlobalEncodeDim = cuda::kEncodeSharedMaxP + 2;

/// Most vectors a CUDA encode keeps in flight with its work space in global
/// memory (8192 at kGlobalEncodeDim); further vectors loop.
std::size_t encode_warps_in_flight() {
  return cuda::global_scratch_warps(cuda::encode_warp_bytes(detail::make_record_layout(kGlobalEncodeDim, 2, 0)),
                                    std::numeric_limits<std::size_t>::max());
}

/// Key records of head_dim 256 at 7 bits: 224 code bytes, two norms and the
/// sign bytes, 24 for kStagedProjections (256 bytes in all, the largest record
/// the CUDA score kernel stages: cuda::kStagedRecordBytes) or 28 for one more
/// projection (260 bytes, read from global memory by a warp per token).
constexpr std::uint32_t kStagingDim = 256;
constexpr std::uint32_t kStagingBits = 7;
constexpr std::uint32_t kStagedProjections = 192;

/// Value records of head_dim 128: 84 bytes at 5 bits (staged by the CUDA
/// attend kernel, up to cuda::kAttendStagedRecordBytes) and 100 at 6 bits (not).
constexpr std::uint32_t kValueStagingDim = 128;
constexpr std::uint32_t kStagedValueBits = 5;

/// Gaussian values times 2^e, e uniform in [-8, 8]: with mixed magnitudes any
/// change of summation order shows in the bits.
std::vector<float> mixed_values(std::size_t n, std::uint32_t seed) {
  std::vector<float> out = Gaussian(seed).vector(n);
  std::mt19937 rng(seed ^ 0x9e3779b9u);
  for (float& x : out) x = std::ldexp(x, static_cast<int>(rng() % 17) - 8);
  return out;
}

/// The largest finite value of a float dtype.
float largest_finite(DType dtype) {
  return dtype == DType::F16 ? 65504.0f : dtype == DType::BF16 ? bits_float(0x7f7f0000u) : bits_float(0x7f7fffffu);
}

/// The smallest positive (subnormal) value of a float dtype.
float smallest_subnormal(DType dtype) {
  return dtype == DType::F16 ? f16_to_f32(0x0001u) : dtype == DType::BF16 ? bf16_to_f32(0x0001u) : bits_float(1u);
}

// ===========================================================================
// convert
// ===========================================================================

struct ConvertCase {
  std::string name;
  DType from = DType::F32;
  DType to = DType::F16;
  std::size_t count = 0;
  std::size_t offset = 0;  ///< elements before the first one converted (misaligns both addresses)
};

/// `n` source elements of `dtype` covering every class of value. F16 and BF16:
/// random 16-bit patterns (NaN payloads, infinities, subnormals all occur).
/// F32: fixed specials first, then random bit patterns, exact BF16 and F16
/// rounding ties, and Gaussians scaled into F16's subnormal and overflow ranges.
Bytes conversion_source(DType dtype, std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  if (dtype != DType::F32) {
    std::vector<std::uint16_t> halves(n);
    for (std::uint16_t& h : halves) h = static_cast<std::uint16_t>(rng() >> 16);
    return bytes_of(halves);
  }
  const std::uint32_t specials[] = {
      0x00000000u, 0x80000000u,  // +0, -0
      0x7f800000u, 0xff800000u,  // +Inf, -Inf
      0x7fc00000u, 0x7fa00001u,  // quiet NaN, signalling NaN with a payload
      0xffc12345u,               // negative NaN with a payload
      0x477fe000u, 0x477ff000u,  // 65504 (largest half), 65520 (rounds to half infinity)
      0x7f7fffffu, 0x00800000u,  // FLT_MAX, FLT_MIN
      0x00000001u, 0x33000000u,  // smallest subnormal, 2^-25 (half the smallest half subnormal: a tie to 0)
      0x33000001u, 0x387fc000u,  // just above that tie; a half subnormal
  };
  const std::vector<float> gaussians = Gaussian(seed).vector(n);
  std::vector<std::uint32_t> words(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (i < std::size(specials)) {
      words[i] = specials[i];
      continue;
    }
    switch (rng() % 4) {
      case 0:
        words[i] = static_cast<std::uint32_t>(rng());
        break;
      case 1:
        words[i] = (rng() & 0xffff0000u) | 0x8000u;
        break;   // halfway between two BF16 values
      case 2: {  // halfway between two normal F16 values
        const auto half = static_cast<std::uint16_t>((rng() & 0x8000u) | ((rng() % 30 + 1) << 10) | (rng() & 0x3ffu));
        words[i] = float_bits(f16_to_f32(half)) | 0x1000u;
        break;
      }
      default:
        words[i] = float_bits(std::ldexp(gaussians[i], static_cast<int>(rng() % 48) - 30));
        break;
    }
  }
  return bytes_of(words);
}

/// Element by element: a load as f32 and a store rounded by dtype.hpp's
/// conversions (round to nearest even, NaN kept); converting a dtype to itself
/// copies its bits.
Bytes reference_convert(const ConvertCase& c, const Bytes& src, Bytes dst) {
  const std::size_t in = dtype_size(c.from);
  const std::size_t out = dtype_size(c.to);
  for (std::size_t i = c.offset; i < c.offset + c.count; ++i) {
    std::uint8_t* target = dst.data() + i * out;
    if (c.from == c.to) {
      std::memcpy(target, src.data() + i * in, in);
      continue;
    }
    const float value = load_as_f32(src.data(), c.from, i);
    if (c.to == DType::F32) {
      std::memcpy(target, &value, 4);
    } else {
      const std::uint16_t half = c.to == DType::F16 ? f32_to_f16(value) : f32_to_bf16(value);
      std::memcpy(target, &half, 2);
    }
  }
  return dst;
}

Bytes run_convert(Backend& backend, const ConvertCase& c, const Bytes& src, const Bytes& dst) {
  const DeviceBuffer source(backend, src);
  const DeviceBuffer target(backend, dst);
  backend.convert(source.at(c.offset * dtype_size(c.from)), c.from, target.at(c.offset * dtype_size(c.to)), c.to,
                  c.count, Stream{});
  return target.read();
}

std::vector<ConvertCase> convert_cases() {
  using D = DType;
  return {
      {"f32_to_f16", D::F32, D::F16, 4099},
      {"f32_to_bf16", D::F32, D::BF16, 4099},
      {"f16_to_f32", D::F16, D::F32, 4099},
      {"bf16_to_f32", D::BF16, D::F32, 4099},
      {"f16_to_bf16", D::F16, D::BF16, 4099},
      {"bf16_to_f16", D::BF16, D::F16, 4099},
      {"f32_to_f16_offset_1", D::F32, D::F16, 1001, 1},
      {"f32_to_bf16_offset_3", D::F32, D::BF16, 1001, 3},
      {"f16_to_f32_offset_1", D::F16, D::F32, 1001, 1},
      {"bf16_to_f16_offset_1", D::BF16, D::F16, 1001, 1},
      {"f32_copy_offset_1", D::F32, D::F32, 777, 1},
      {"f16_copy_offset_1", D::F16, D::F16, 777, 1},
      {"bf16_copy", D::BF16, D::BF16, 777},
      {"one_element", D::F32, D::BF16, 1},
      {"no_elements", D::F32, D::F16, 0},
      {"no_elements_copy", D::F16, D::F16, 0},
      {"many_blocks", D::F32, D::BF16, 300001},
  };
}

using BackendConformanceConvert = ConformanceTest<ConvertCase>;

TEST_P(BackendConformanceConvert, RoundsToNearestEvenKeepsNaNAndCopiesItsOwnType) {
  const ConvertCase& c = param();
  const Bytes src = conversion_source(c.from, c.offset + c.count, seed_of(c.name));
  const Bytes dst = random_bytes((c.offset + c.count) * dtype_size(c.to), seed_of(c.name) + 1);
  const Bytes expected =
      on_reference_device() ? reference_convert(c, src, dst) : run_convert(cpu_backend(), c, src, dst);
  expect_same_bytes(run_convert(backend(), c, src, dst), expected, dtype_size(c.to), "converted elements");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceConvert, ::testing::ValuesIn(on_every_device(convert_cases())),
                         device_case_name<ConvertCase>);

// ===========================================================================
// find_non_finite
// ===========================================================================

struct FindNonFiniteCase {
  std::string name;
  DType dtype = DType::F32;
  std::size_t count = 0;
  std::vector<std::pair<std::size_t, float>> planted = {};  ///< (index, non-finite value) over finite data
  std::size_t offset = 0;                                   ///< elements before the first one searched
};

/// Finite elements (the dtype's largest and smallest values, -0 among them)
/// with the case's non-finite values planted.
Bytes non_finite_data(const FindNonFiniteCase& c) {
  std::vector<float> values = mixed_values(c.offset + c.count, seed_of(c.name));
  const float extremes[] = {largest_finite(c.dtype), -largest_finite(c.dtype), smallest_subnormal(c.dtype), -0.0f};
  for (std::size_t e = 0; e < std::size(extremes) && c.offset + 1 + e < values.size(); ++e) {
    values[c.offset + 1 + e] = extremes[e];
  }
  for (const auto& [index, value] : c.planted) values[c.offset + index] = value;
  return elements_of(values, c.dtype);
}

std::size_t reference_find_non_finite(const FindNonFiniteCase& c, const Bytes& data) {
  for (std::size_t i = 0; i < c.count; ++i) {
    if (!std::isfinite(load_as_f32(data.data(), c.dtype, c.offset + i))) return i;
  }
  return c.count;
}

std::size_t run_find_non_finite(Backend& backend, const FindNonFiniteCase& c, const Bytes& data) {
  const DeviceBuffer buffer(backend, data);
  return backend.find_non_finite(buffer.at(c.offset * dtype_size(c.dtype)), c.dtype, c.count, Stream{});
}

std::vector<FindNonFiniteCase> find_non_finite_cases() {
  using D = DType;
  return {
      {"all_finite_f32", D::F32, 1000},
      {"all_finite_f16", D::F16, 1000},
      {"all_finite_bf16", D::BF16, 1000},
      {"nan_first", D::F32, 100, {{0, kNaN}}},
      {"inf_last_f16", D::F16, 517, {{516, kInf}}},
      {"negative_inf_bf16", D::BF16, 300, {{150, -kInf}}},
      {"first_of_several", D::F32, 5000, {{4000, kNaN}, {1234, -kInf}, {4999, kInf}}},
      {"first_of_several_far_apart_bf16", D::BF16, 300000, {{299999, kNaN}, {200001, kInf}}},
      {"offset_1_f16", D::F16, 999, {{998, kNaN}}, 1},
      {"offset_3_f32", D::F32, 333, {{17, kInf}}, 3},
      {"one_element_nan", D::F32, 1, {{0, kNaN}}},
      {"no_elements", D::F32, 0},
  };
}

using BackendConformanceFindNonFinite = ConformanceTest<FindNonFiniteCase>;

TEST_P(BackendConformanceFindNonFinite, ReturnsTheFirstNaNOrInfinityElseCount) {
  const FindNonFiniteCase& c = param();
  const Bytes data = non_finite_data(c);
  const std::size_t expected =
      on_reference_device() ? reference_find_non_finite(c, data) : run_find_non_finite(cpu_backend(), c, data);
  EXPECT_EQ(run_find_non_finite(backend(), c, data), expected);
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceFindNonFinite,
                         ::testing::ValuesIn(on_every_device(find_non_finite_cases())),
                         device_case_name<FindNonFiniteCase>);

// ===========================================================================
// head_mean, top_k_head_mean, head_mean_column_sums: one view geometry
// ===========================================================================

/// What the elements of a view's buffer hold.
enum class Fill {
  Mixed,      ///< mixed_values
  Ties,       ///< multiples of 1/4 in [0, 2]: many equal head means (top-k tie breaks)
  Specials,   ///< Mixed with NaN, +-Inf and +-0 planted (see plant_specials)
  MostlyNaN,  ///< nine in ten NaN, the rest Ties: rows with fewer numbers than k
};

/// A HeadMeanView over a buffer of `heads` heads, and its top-k `k`.
struct ViewCase {
  std::string name;
  DType dtype = DType::F32;
  std::size_t heads = 4;                   ///< heads stored
  std::vector<std::uint16_t> listed = {};  ///< heads averaged, ascending; empty: all `heads`
  std::size_t rows = 1;
  std::size_t cols = 1;
  std::size_t row_stride = 0;  ///< 0: dense rows (cols * col_stride)
  std::size_t col_stride = 1;
  std::size_t head_pad = 0;  ///< elements between one head's last element and the next head
  std::size_t offset = 0;    ///< elements before element (0, 0) of head 0
  Fill fill = Fill::Mixed;
  std::size_t k = 0;  ///< top_k_head_mean only

  std::size_t row_step() const { return row_stride != 0 ? row_stride : cols * col_stride; }
  std::size_t head_extent() const {
    return rows == 0 || cols == 0 ? 0 : (rows - 1) * row_step() + (cols - 1) * col_stride + 1;
  }
  std::size_t head_stride() const { return head_extent() + head_pad; }
  std::size_t elements() const { return offset + (heads - 1) * head_stride() + head_extent(); }
  std::size_t index(std::size_t head, std::size_t r, std::size_t c) const {
    return offset + head * head_stride() + r * row_step() + c * col_stride;
  }
  std::vector<std::size_t> averaged() const {
    std::vector<std::size_t> out(listed.begin(), listed.end());
    if (listed.empty()) {
      out.resize(heads);
      std::iota(out.begin(), out.end(), std::size_t{0});
    }
    return out;
  }
};

/// Specials planted over the buffer: every 16th element cycles through NaN,
/// +Inf, -Inf, +0, -0; and in row 0, column 0 is -0 in every averaged head
/// (its mean is +0: sums start at +0), column 1 is +Inf in the first averaged
/// head and -Inf in the last (NaN), column 2 is NaN in the last.
void plant_specials(const ViewCase& c, std::vector<float>& values) {
  const float cycle[] = {kNaN, kInf, -kInf, 0.0f, -0.0f};
  for (std::size_t i = 0; i < values.size(); i += 16) values[i] = cycle[(i / 16) % std::size(cycle)];
  if (c.rows == 0 || c.cols < 3) return;
  const std::vector<std::size_t> heads = c.averaged();
  for (const std::size_t h : heads) values[c.index(h, 0, 0)] = -0.0f;
  values[c.index(heads.front(), 0, 1)] = kInf;
  values[c.index(heads.back(), 0, 1)] = heads.size() > 1 ? -kInf : kInf;
  values[c.index(heads.back(), 0, 2)] = kNaN;
}

/// The view's buffer, as elements of its dtype.
Bytes view_data(const ViewCase& c) {
  const std::size_t n = c.elements();
  const std::uint32_t seed = seed_of(c.name);
  std::vector<float> values = mixed_values(n, seed);
  std::mt19937 rng(seed);
  if (c.fill == Fill::Ties || c.fill == Fill::MostlyNaN) {
    for (float& x : values) x = static_cast<float>(rng() % 9) * 0.25f;
  }
  if (c.fill == Fill::MostlyNaN) {
    for (float& x : values) x = rng() % 10 == 0 ? x : kNaN;
  }
  if (c.fill == Fill::Specials) plant_specials(c, values);
  return elements_of(values, c.dtype);
}

HeadMeanView view_of(const ViewCase& c, const void* data) {
  HeadMeanView view;
  view.data = data;
  view.dtype = c.dtype;
  view.offset = c.offset;
  view.head_stride = c.head_stride();
  view.n_rows = c.rows;
  view.row_stride = c.row_step();
  view.n_cols = c.cols;
  view.col_stride = c.col_stride;
  view.heads.listed = !c.listed.empty();
  view.heads.count = static_cast<std::uint32_t>(c.averaged().size());
  std::copy(c.listed.begin(), c.listed.end(), view.heads.index);
  return view;
}

/// Element (r, c): the averaged heads' values summed in order in f32 from +0,
/// then divided by the head count (head_mean_view.hpp).
std::vector<float> reference_head_means(const ViewCase& c, const Bytes& data) {
  const std::vector<std::size_t> heads = c.averaged();
  std::vector<float> out(c.rows * c.cols);
  for (std::size_t r = 0; r < c.rows; ++r) {
    for (std::size_t col = 0; col < c.cols; ++col) {
      float sum = 0.0f;
      for (const std::size_t h : heads) sum += load_as_f32(data.data(), c.dtype, c.index(h, r, col));
      out[r * c.cols + col] = sum / static_cast<float>(heads.size());
    }
  }
  return out;
}

/// `values` written over the start of `buffer`.
template <class T>
Bytes overwritten(Bytes buffer, const std::vector<T>& values) {
  if (!values.empty()) std::memcpy(buffer.data(), values.data(), values.size() * sizeof(T));
  return buffer;
}

// ---- head_mean -------------------------------------------------------------

Bytes run_head_mean(Backend& backend, const ViewCase& c, const Bytes& data, const Bytes& out) {
  const DeviceBuffer input(backend, data);
  const DeviceBuffer means(backend, out);
  backend.head_mean(view_of(c, input.at()), means.as<float>(), Stream{});
  return means.read();
}

/// Listed heads 0..n-1 without `skipped`.
std::vector<std::uint16_t> heads_except(std::size_t n, std::vector<std::uint16_t> skipped) {
  std::vector<std::uint16_t> out;
  for (std::size_t h = 0; h < n; ++h) {
    if (std::find(skipped.begin(), skipped.end(), h) == skipped.end()) out.push_back(static_cast<std::uint16_t>(h));
  }
  return out;
}

std::vector<ViewCase> head_mean_cases() {
  using D = DType;
  const std::vector<std::uint16_t> max_listed = heads_except(kMaxListedHeads + 2, {3, 77});
  const std::vector<std::uint16_t> listed_40_of_50 = heads_except(50, {0, 5, 11, 17, 23, 29, 31, 37, 41, 49});
  return {
      {.name = "one_row_aligned", .heads = 8, .cols = 1024},
      {.name = "one_row_offset_1", .heads = 8, .cols = 1024, .offset = 1},
      {.name = "one_row_f16_odd_cols_offset_1", .dtype = D::F16, .heads = 6, .cols = 1001, .offset = 1},
      {.name = "one_row_bf16_odd_cols_offset_3", .dtype = D::BF16, .heads = 5, .cols = 999, .offset = 3},
      {.name = "whole_odd_cols", .heads = 3, .rows = 33, .cols = 101},
      {.name = "whole_f16_aligned_rows", .dtype = D::F16, .heads = 4, .rows = 16, .cols = 64},
      {.name = "whole_bf16_padded_rows", .dtype = D::BF16, .heads = 4, .rows = 9, .cols = 40, .row_stride = 43},
      {.name = "whole_padded_heads", .heads = 3, .rows = 7, .cols = 32, .head_pad = 5},
      {.name = "key_column", .heads = 4, .cols = 50, .col_stride = 64, .head_pad = 63, .offset = 17},
      {.name = "key_column_bf16",
       .dtype = D::BF16,
       .heads = 6,
       .cols = 33,
       .col_stride = 7,
       .head_pad = 6,
       .offset = 6},
      {.name = "transposed_f16",
       .dtype = D::F16,
       .heads = 3,
       .rows = 64,
       .cols = 50,
       .row_stride = 1,
       .col_stride = 64},
      {.name = "listed_heads", .heads = 12, .listed = {1, 4, 5, 11}, .rows = 5, .cols = 77},
      {.name = "listed_one_head_bf16", .dtype = D::BF16, .heads = 8, .listed = {7}, .rows = 3, .cols = 65},
      {.name = "listed_max_heads_f16",
       .dtype = D::F16,
       .heads = kMaxListedHeads + 2,
       .listed = max_listed,
       .rows = 2,
       .cols = 17},
      {.name = "all_200_heads", .heads = 200, .cols = 300},
      {.name = "one_row_head_chunk_plus_1_tile_plus_1",
       .heads = cuda::kRowHeadChunk + 1,
       .cols = cuda::kRowTileColumns + 1},
      {.name = "one_row_listed_40_of_50_heads_bf16",
       .dtype = D::BF16,
       .heads = 50,
       .listed = listed_40_of_50,
       .cols = 2 * cuda::kRowTileColumns + 1},
      {.name = "one_head", .heads = 1, .rows = 3, .cols = 5},
      {.name = "one_element_bf16", .dtype = D::BF16, .heads = 3},
      {.name = "specials", .heads = 5, .rows = 4, .cols = 64, .fill = Fill::Specials},
      {.name = "specials_f16_offset_1",
       .dtype = D::F16,
       .heads = 4,
       .rows = 3,
       .cols = 37,
       .offset = 1,
       .fill = Fill::Specials},
      {.name = "specials_bf16_listed",
       .dtype = D::BF16,
       .heads = 9,
       .listed = {0, 2, 8},
       .rows = 2,
       .cols = 50,
       .fill = Fill::Specials},
      {.name = "many_blocks_f16", .dtype = D::F16, .heads = 4, .rows = 3, .cols = 70001},
      {.name = "no_rows", .heads = 4, .rows = 0, .cols = 16},
      {.name = "no_cols", .heads = 4, .rows = 3, .cols = 0},
  };
}

using BackendConformanceHeadMean = ConformanceTest<ViewCase>;

TEST_P(BackendConformanceHeadMean, SumsHeadsInOrderInF32ThenDivides) {
  const ViewCase& c = param();
  const Bytes data = view_data(c);
  const Bytes out = random_bytes(c.rows * c.cols * sizeof(float), seed_of(c.name) + 1);
  const Bytes expected = on_reference_device() ? overwritten(out, reference_head_means(c, data))
                                               : run_head_mean(cpu_backend(), c, data, out);
  expect_same_floats(run_head_mean(backend(), c, data, out), expected, c.rows * c.cols, "head means");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceHeadMean, ::testing::ValuesIn(on_every_device(head_mean_cases())),
                         device_case_name<ViewCase>);

// ---- top_k_head_mean -------------------------------------------------------

struct Ranked {
  float weight;
  std::int32_t index;
};

/// detail::top_k_key's order spelled out: numbers by weight descending (-0
/// equal to +0), equal weights by lower index, NaN after every number, NaNs
/// by lower index.
bool ranks_before(const Ranked& a, const Ranked& b) {
  const bool a_nan = std::isnan(a.weight);
  const bool b_nan = std::isnan(b.weight);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a.weight != b.weight) return a.weight > b.weight;
  return a.index < b.index;
}

/// A weight as top-k reports it: NaN canonical, -0 as +0 (top_k_key.hpp).
float reported_weight(float weight) {
  if (std::isnan(weight)) return bits_float(0x7fc00000u);
  return weight == 0.0f ? 0.0f : weight;
}

struct TopKOutput {
  Bytes indices;
  Bytes weights;
};

TopKOutput reference_top_k(const ViewCase& c, const Bytes& data, TopKOutput out) {
  const std::vector<float> means = reference_head_means(c, data);
  std::vector<std::int32_t> indices(c.rows * c.k);
  std::vector<float> weights(c.rows * c.k);
  for (std::size_t r = 0; r < c.rows; ++r) {
    std::vector<Ranked> row(c.cols);
    for (std::size_t col = 0; col < c.cols; ++col) row[col] = {means[r * c.cols + col], static_cast<std::int32_t>(col)};
    std::sort(row.begin(), row.end(), ranks_before);
    for (std::size_t j = 0; j < c.k; ++j) {
      indices[r * c.k + j] = row[j].index;
      weights[r * c.k + j] = reported_weight(row[j].weight);
    }
  }
  return {overwritten(std::move(out.indices), indices), overwritten(std::move(out.weights), weights)};
}

TopKOutput run_top_k(Backend& backend, const ViewCase& c, const Bytes& data, const TopKOutput& out) {
  const DeviceBuffer input(backend, data);
  const DeviceBuffer indices(backend, out.indices);
  const DeviceBuffer weights(backend, out.weights);
  backend.top_k_head_mean(view_of(c, input.at()), c.k, indices.as<std::int32_t>(), weights.as<float>(), Stream{});
  return {indices.read(), weights.read()};
}

std::vector<ViewCase> top_k_cases() {
  using D = DType;
  const std::size_t warp = cuda::kWarpTopKMax;
  const std::string below = std::to_string(warp - 1);
  const std::string at = std::to_string(warp);
  const std::string above = std::to_string(warp + 1);
  const std::size_t segment = cuda::kTopKMinSegmentColumns;
  return {
      {.name = "k1", .rows = 3, .cols = 100, .k = 1},
      {.name = "k" + below, .rows = 3, .cols = 100, .k = warp - 1},
      {.name = "k" + at, .rows = 3, .cols = 100, .k = warp},
      {.name = "k" + above, .rows = 3, .cols = 100, .k = warp + 1},
      {.name = "k" + at + "_ties_bf16", .dtype = D::BF16, .rows = 4, .cols = 200, .fill = Fill::Ties, .k = warp},
      {.name = "k" + above + "_ties_f16", .dtype = D::F16, .rows = 4, .cols = 200, .fill = Fill::Ties, .k = warp + 1},
      {.name = "k" + at + "_all_columns", .rows = 2, .cols = warp, .k = warp},
      {.name = "k20_all_columns", .rows = 3, .cols = 20, .k = 20},
      {.name = "k" + below + "_specials", .rows = 3, .cols = 64, .fill = Fill::Specials, .k = warp - 1},
      {.name = "k" + above + "_specials_bf16",
       .dtype = D::BF16,
       .rows = 3,
       .cols = 64,
       .fill = Fill::Specials,
       .k = warp + 1},
      {.name = "k" + at + "_mostly_nan", .rows = 3, .cols = 100, .fill = Fill::MostlyNaN, .k = warp},
      {.name = "k" + above + "_mostly_nan_f16",
       .dtype = D::F16,
       .rows = 3,
       .cols = 100,
       .fill = Fill::MostlyNaN,
       .k = warp + 1},
      {.name = "k" + at + "_long_rows", .heads = 2, .rows = 2, .cols = 10000, .k = warp},
      {.name = "k" + at + "_one_row_segments_f16", .dtype = D::F16, .heads = 3, .cols = 8 * segment + 1, .k = warp},
      {.name = "k1_one_row_segments", .cols = 4 * segment + 1, .k = 1},
      {.name = "k1025_one_row_segments", .cols = 4 * segment + 4, .k = 1025},
      {.name = "k1024", .heads = 3, .rows = 3, .cols = 3000, .k = 1024},
      {.name = "k1025_bf16", .dtype = D::BF16, .heads = 3, .rows = 3, .cols = 3000, .k = 1025},
      {.name = "k1025_all_columns", .rows = 2, .cols = 1025, .k = 1025},
      {.name = "k1500_all_columns_ties_f16", .dtype = D::F16, .rows = 2, .cols = 1500, .fill = Fill::Ties, .k = 1500},
      {.name = "k1024_specials", .rows = 2, .cols = 2048, .fill = Fill::Specials, .k = 1024},
      {.name = "k8_listed_heads", .heads = 10, .listed = {2, 3, 9}, .rows = 5, .cols = 300, .k = 8},
      {.name = "k40_listed_heads_bf16",
       .dtype = D::BF16,
       .heads = 10,
       .listed = {0, 9},
       .rows = 3,
       .cols = 300,
       .k = 40},
      {.name = "k5_key_column", .cols = 50, .col_stride = 64, .head_pad = 63, .offset = 9, .k = 5},
      {.name = "k" + at + "_odd_cols_offset_1_bf16", .dtype = D::BF16, .cols = 1001, .offset = 1, .k = warp},
      {.name = "k" + above + "_odd_cols_offset_1_f16", .dtype = D::F16, .cols = 999, .offset = 1, .k = warp + 1},
      {.name = "k1_one_column", .rows = 4, .cols = 1, .k = 1},
      {.name = "k64_many_rows", .heads = 2, .rows = 100, .cols = 128, .k = 64},
      {.name = "k3_no_rows", .rows = 0, .cols = 10, .k = 3},
  };
}

using BackendConformanceTopK = ConformanceTest<ViewCase>;

TEST_P(BackendConformanceTopK, OrdersByMeanDescendingThenLowerIndexWithNaNLast) {
  const ViewCase& c = param();
  const Bytes data = view_data(c);
  const TopKOutput out{random_bytes(c.rows * c.k * sizeof(std::int32_t), seed_of(c.name) + 1),
                       random_bytes(c.rows * c.k * sizeof(float), seed_of(c.name) + 2)};
  const TopKOutput expected =
      on_reference_device() ? reference_top_k(c, data, out) : run_top_k(cpu_backend(), c, data, out);
  const TopKOutput actual = run_top_k(backend(), c, data, out);
  expect_same_bytes(actual.indices, expected.indices, sizeof(std::int32_t), "top-k indices");
  expect_same_bytes(actual.weights, expected.weights, sizeof(float), "top-k weights");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceTopK, ::testing::ValuesIn(on_every_device(top_k_cases())),
                         device_case_name<ViewCase>);

// ---- head_mean_column_sums -------------------------------------------------

/// Column c: from +0, the head means of rows [64 i, 64 i + 64) added in order
/// into a chunk sum starting at +0, and the chunk sums added in chunk order
/// (64 = kColumnSumChunkRows).
std::vector<float> reference_column_sums(const ViewCase& c, const Bytes& data) {
  const std::vector<float> means = reference_head_means(c, data);
  std::vector<float> out(c.cols);
  for (std::size_t col = 0; col < c.cols; ++col) {
    float total = 0.0f;
    for (std::size_t first = 0; first < c.rows; first += kColumnSumChunkRows) {
      float chunk = 0.0f;
      for (std::size_t r = first; r < std::min(c.rows, first + kColumnSumChunkRows); ++r)
        chunk += means[r * c.cols + col];
      total += chunk;
    }
    out[col] = total;
  }
  return out;
}

Bytes run_column_sums(Backend& backend, const ViewCase& c, const Bytes& data, const Bytes& out) {
  const DeviceBuffer input(backend, data);
  const DeviceBuffer sums(backend, out);
  backend.head_mean_column_sums(view_of(c, input.at()), sums.as<float>(), Stream{});
  return sums.read();
}

std::vector<ViewCase> column_sum_cases() {
  using D = DType;
  const std::size_t chunk = kColumnSumChunkRows;
  const std::string below = std::to_string(chunk - 1);
  const std::string at = std::to_string(chunk);
  const std::string above = std::to_string(chunk + 1);
  return {
      {.name = "rows_1", .heads = 3, .rows = 1, .cols = 50},
      {.name = "rows_" + below, .rows = chunk - 1, .cols = 40},
      {.name = "rows_" + at, .rows = chunk, .cols = 40},
      {.name = "rows_" + above, .rows = chunk + 1, .cols = 40},
      {.name = "rows_" + std::to_string(2 * chunk) + "_bf16", .dtype = D::BF16, .rows = 2 * chunk, .cols = 40},
      {.name = "rows_" + std::to_string(2 * chunk + 1) + "_f16", .dtype = D::F16, .rows = 2 * chunk + 1, .cols = 40},
      {.name = "rows_300_odd_cols", .heads = 3, .rows = 300, .cols = 101},
      {.name = "rows_" + above + "_specials", .rows = chunk + 1, .cols = 30, .fill = Fill::Specials},
      {.name = "rows_" + at + "_listed_heads_bf16",
       .dtype = D::BF16,
       .heads = 7,
       .listed = {0, 3, 6},
       .rows = chunk,
       .cols = 33},
      {.name = "rows_" + above + "_offset_1_f16", .dtype = D::F16, .rows = chunk + 1, .cols = 33, .offset = 1},
      {.name = "rows_" + std::to_string(2 * chunk + 1) + "_padded_rows",
       .rows = 2 * chunk + 1,
       .cols = 20,
       .row_stride = 23},
      {.name = "rows_" + above + "_transposed",
       .rows = chunk + 1,
       .cols = 30,
       .row_stride = 1,
       .col_stride = chunk + 1},
      {.name = "rows_" + above + "_wide", .heads = 2, .rows = chunk + 1, .cols = 5000},
      {.name = "no_rows", .rows = 0, .cols = 10},
      {.name = "no_cols", .rows = chunk + 6, .cols = 0},
  };
}

using BackendConformanceColumnSums = ConformanceTest<ViewCase>;

TEST_P(BackendConformanceColumnSums, AddsHeadMeansByRowInChunksThenChunksInOrder) {
  const ViewCase& c = param();
  const Bytes data = view_data(c);
  const Bytes out = random_bytes(c.cols * sizeof(float), seed_of(c.name) + 1);
  const Bytes expected = on_reference_device() ? overwritten(out, reference_column_sums(c, data))
                                               : run_column_sums(cpu_backend(), c, data, out);
  expect_same_floats(run_column_sums(backend(), c, data, out), expected, c.cols, "column sums");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceColumnSums, ::testing::ValuesIn(on_every_device(column_sum_cases())),
                         device_case_name<ViewCase>);

// ===========================================================================
// copy_tokens
// ===========================================================================

/// Where token t of a copy comes from.
enum class Gather {
  None,      ///< logical token t
  Shuffled,  ///< src_tokens: distinct logical tokens in random order
  Repeated,  ///< src_tokens: random logical tokens, repeats allowed
};

struct CopyCase {
  std::string name;
  std::size_t buffers = 1;
  std::size_t planes = 4;
  std::size_t token_bytes = 16;
  std::size_t src_capacity = 1;
  std::size_t src_start = 0;
  std::size_t dst_capacity = 1;
  std::size_t dst_start = 0;
  std::size_t tokens = 0;
  Gather gather = Gather::None;
  std::size_t src_misalign = 0;  ///< bytes added to every source buffer's address
  std::size_t dst_misalign = 0;  ///< bytes added to every destination buffer's address
};

struct CopyData {
  std::vector<Bytes> src;
  std::vector<Bytes> dst;  ///< the destinations' bytes before the copy
  std::vector<std::int32_t> src_tokens;
};

CopyData copy_data(const CopyCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  CopyData data;
  for (std::size_t b = 0; b < c.buffers; ++b) {
    const auto salt = static_cast<std::uint32_t>(2 * b);
    data.src.push_back(random_bytes(c.src_misalign + c.planes * c.src_capacity * c.token_bytes, seed + salt));
    data.dst.push_back(random_bytes(c.dst_misalign + c.planes * c.dst_capacity * c.token_bytes, seed + salt + 1));
  }
  std::mt19937 rng(seed);
  if (c.gather == Gather::Shuffled) {
    std::vector<std::int32_t> all(c.src_capacity);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    data.src_tokens.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(c.tokens));
  } else if (c.gather == Gather::Repeated) {
    for (std::size_t t = 0; t < c.tokens; ++t)
      data.src_tokens.push_back(static_cast<std::int32_t>(rng() % c.src_capacity));
  }
  return data;
}

/// Token by token: slot (src_start + s(t)) % src_capacity of every plane to
/// slot (dst_start + t) % dst_capacity (token_copy.hpp).
std::vector<Bytes> reference_copy(const CopyCase& c, const CopyData& data) {
  std::vector<Bytes> dst = data.dst;
  for (std::size_t b = 0; b < c.buffers; ++b) {
    for (std::size_t p = 0; p < c.planes; ++p) {
      for (std::size_t t = 0; t < c.tokens; ++t) {
        const std::size_t logical = c.gather == Gather::None ? t : static_cast<std::size_t>(data.src_tokens[t]);
        const std::size_t from = (c.src_start + logical) % c.src_capacity;
        const std::size_t to = (c.dst_start + t) % c.dst_capacity;
        std::memcpy(dst[b].data() + c.dst_misalign + (p * c.dst_capacity + to) * c.token_bytes,
                    data.src[b].data() + c.src_misalign + (p * c.src_capacity + from) * c.token_bytes, c.token_bytes);
      }
    }
  }
  return dst;
}

std::vector<Bytes> run_copy(Backend& backend, const CopyCase& c, const CopyData& data) {
  std::vector<std::unique_ptr<DeviceBuffer>> src;
  std::vector<std::unique_ptr<DeviceBuffer>> dst;
  const DeviceBuffer src_tokens(backend, bytes_of(data.src_tokens));
  TokenCopy copy;
  copy.buffers = c.buffers;
  for (std::size_t b = 0; b < c.buffers; ++b) {
    src.push_back(std::make_unique<DeviceBuffer>(backend, data.src[b]));
    dst.push_back(std::make_unique<DeviceBuffer>(backend, data.dst[b]));
    copy.src[b] = src[b]->at(c.src_misalign);
    copy.dst[b] = dst[b]->at(c.dst_misalign);
  }
  copy.src_capacity = c.src_capacity;
  copy.src_start = c.src_start;
  copy.dst_capacity = c.dst_capacity;
  copy.dst_start = c.dst_start;
  copy.planes = c.planes;
  copy.tokens = c.tokens;
  copy.token_bytes = c.token_bytes;
  copy.src_tokens = c.gather == Gather::None ? nullptr : src_tokens.as<std::int32_t>();
  backend.copy_tokens(copy, Stream{});
  std::vector<Bytes> out;
  for (const auto& buffer : dst) out.push_back(buffer->read());
  return out;
}

std::vector<CopyCase> copy_cases() {
  return {
      {.name = "append_one_token",
       .planes = 8,
       .token_bytes = 256,
       .src_capacity = 1,
       .dst_capacity = 64,
       .dst_start = 10,
       .tokens = 1},
      {.name = "append_wraps_destination",
       .token_bytes = 64,
       .src_capacity = 5,
       .dst_capacity = 16,
       .dst_start = 14,
       .tokens = 5},
      {.name = "compaction_wraps_source",
       .planes = 3,
       .token_bytes = 32,
       .src_capacity = 32,
       .src_start = 30,
       .dst_capacity = 20,
       .tokens = 20},
      {.name = "growth_both_wrap",
       .planes = 2,
       .token_bytes = 48,
       .src_capacity = 10,
       .src_start = 7,
       .dst_capacity = 25,
       .dst_start = 20,
       .tokens = 10},
      {.name = "whole_ring_rotation",
       .planes = 2,
       .src_capacity = 17,
       .src_start = 5,
       .dst_capacity = 17,
       .dst_start = 11,
       .tokens = 17},
      {.name = "keys_and_values_wrap",
       .buffers = 2,
       .planes = 6,
       .token_bytes = 128,
       .src_capacity = 40,
       .src_start = 35,
       .dst_capacity = 64,
       .dst_start = 60,
       .tokens = 30},
      {.name = "gather_shuffled_source_wraps",
       .planes = 3,
       .token_bytes = 32,
       .src_capacity = 50,
       .src_start = 45,
       .dst_capacity = 30,
       .tokens = 30,
       .gather = Gather::Shuffled},
      {.name = "gather_repeated_keys_and_values",
       .buffers = 2,
       .planes = 2,
       .token_bytes = 24,
       .src_capacity = 20,
       .src_start = 3,
       .dst_capacity = 40,
       .dst_start = 38,
       .tokens = 40,
       .gather = Gather::Repeated},
      {.name = "two_byte_tokens",
       .planes = 5,
       .token_bytes = 2,
       .src_capacity = 100,
       .src_start = 90,
       .dst_capacity = 100,
       .tokens = 100},
      {.name = "six_byte_tokens",
       .planes = 3,
       .token_bytes = 6,
       .src_capacity = 33,
       .src_start = 31,
       .dst_capacity = 40,
       .dst_start = 1,
       .tokens = 33},
      {.name = "one_byte_tokens_gather",
       .planes = 2,
       .token_bytes = 1,
       .src_capacity = 64,
       .dst_capacity = 64,
       .dst_start = 3,
       .tokens = 50,
       .gather = Gather::Repeated},
      {.name = "twelve_byte_tokens",
       .planes = 3,
       .token_bytes = 12,
       .src_capacity = 9,
       .src_start = 4,
       .dst_capacity = 12,
       .dst_start = 8,
       .tokens = 9},
      {.name = "eighteen_byte_tokens_misaligned",
       .planes = 3,
       .token_bytes = 18,
       .src_capacity = 11,
       .src_start = 2,
       .dst_capacity = 15,
       .dst_start = 9,
       .tokens = 11,
       .src_misalign = 2,
       .dst_misalign = 6},
      {.name = "sixteen_byte_tokens_misaligned",
       .planes = 3,
       .src_capacity = 11,
       .src_start = 2,
       .dst_capacity = 15,
       .dst_start = 9,
       .tokens = 11,
       .src_misalign = 4,
       .dst_misalign = 8},
      {.name = "large_tokens",
       .planes = 2,
       .token_bytes = 8192,
       .src_capacity = 4,
       .src_start = 3,
       .dst_capacity = 8,
       .dst_start = 6,
       .tokens = 4},
      {.name = "many_planes_and_tokens",
       .planes = 64,
       .token_bytes = 64,
       .src_capacity = 300,
       .src_start = 123,
       .dst_capacity = 512,
       .dst_start = 500,
       .tokens = 300},
      {.name = "no_tokens", .src_capacity = 8, .dst_capacity = 8},
      {.name = "no_tokens_gather", .src_capacity = 8, .dst_capacity = 8, .gather = Gather::Shuffled},
      {.name = "no_planes", .planes = 0, .src_capacity = 8, .dst_capacity = 8, .tokens = 8},
  };
}

using BackendConformanceCopyTokens = ConformanceTest<CopyCase>;

TEST_P(BackendConformanceCopyTokens, MovesEveryTokenToItsRingSlotAndNothingElse) {
  const CopyCase& c = param();
  const CopyData data = copy_data(c);
  const std::vector<Bytes> expected =
      on_reference_device() ? reference_copy(c, data) : run_copy(cpu_backend(), c, data);
  const std::vector<Bytes> actual = run_copy(backend(), c, data);
  ASSERT_EQ(actual.size(), expected.size());
  for (std::size_t b = 0; b < actual.size(); ++b) {
    expect_same_bytes(actual[b], expected[b], c.token_bytes, "destination " + std::to_string(b));
  }
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceCopyTokens, ::testing::ValuesIn(on_every_device(copy_cases())),
                         device_case_name<CopyCase>);

// ===========================================================================
// paged_write and paged_gather
// ===========================================================================

struct PagedCase {
  std::string name;
  PagedLayout layout = PagedLayout::Nhd;
  DType dtype = DType::F32;
  std::size_t head_dim = 64;
  std::size_t kv_heads = 2;
  std::size_t page_size = 16;
  std::size_t num_pages = 4;
  std::size_t tokens = 0;
  std::size_t stride_pad = 0;      ///< write: elements between tokens of the inputs past kv_heads * head_dim
  std::size_t first_slot = 0;      ///< write: slots are drawn from [first_slot, num_pages * page_size)
  std::size_t negative_every = 0;  ///< write: every n-th token's slot is negative (0: none)
  std::size_t misalign = 0;        ///< bytes added to the keys' and values' addresses (inputs or outputs)

  std::size_t slots() const { return num_pages * page_size; }
  std::size_t element() const { return dtype_size(dtype); }
  std::size_t row_bytes() const { return head_dim * element(); }
  std::size_t token_stride() const { return kv_heads * head_dim + stride_pad; }
  std::size_t page_bytes() const { return num_pages * 2 * page_size * kv_heads * row_bytes(); }
  /// Byte of the row of head `head` of the key (kind 0) or value (1) in slot
  /// `slot`: NHD `[num_pages, 2, page_size, kv_heads, head_dim]`, HND
  /// `[num_pages, 2, kv_heads, page_size, head_dim]`.
  std::size_t row_byte(std::size_t slot, std::size_t kind, std::size_t head) const {
    const std::size_t page = slot / page_size;
    const std::size_t offset = slot % page_size;
    const std::size_t row = layout == PagedLayout::Nhd ? ((page * 2 + kind) * page_size + offset) * kv_heads + head
                                                       : ((page * 2 + kind) * kv_heads + head) * page_size + offset;
    return row * row_bytes();
  }
  PagedPages pages(void* data) const {
    return {.data = data,
            .dtype = dtype,
            .layout = layout,
            .num_pages = num_pages,
            .page_size = page_size,
            .kv_heads = kv_heads,
            .head_dim = head_dim};
  }
};

// ---- paged_write -----------------------------------------------------------

struct PagedWriteData {
  Bytes pages;  ///< before the write
  Bytes keys;   ///< misalign bytes, then tokens * token_stride elements
  Bytes values;
  std::vector<std::int64_t> slot_mapping;
};

/// Random pages and inputs; distinct slots of [first_slot, slots) in random
/// order (the pool's last slot first), every negative_every-th replaced by a
/// negative one (-1, INT64_MIN, -page_size, -2 in turn).
PagedWriteData paged_write_data(const PagedCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  const std::size_t input_bytes = c.misalign + c.tokens * c.token_stride() * c.element();
  PagedWriteData data{
      random_bytes(c.page_bytes(), seed), random_bytes(input_bytes, seed + 1), random_bytes(input_bytes, seed + 2), {}};
  std::vector<std::int64_t> slots(c.slots() - c.first_slot);
  std::iota(slots.begin(), slots.end(), static_cast<std::int64_t>(c.first_slot));
  std::shuffle(slots.begin(), slots.end(), std::mt19937(seed + 3));
  if (!slots.empty()) std::iter_swap(slots.begin(), std::max_element(slots.begin(), slots.end()));
  EXPECT_LE(c.tokens, slots.size()) << "more tokens than distinct slots";
  const std::int64_t negatives[] = {-1, std::numeric_limits<std::int64_t>::min(),
                                    -static_cast<std::int64_t>(c.page_size), -2};
  for (std::size_t t = 0; t < c.tokens; ++t) {
    const bool negative = c.negative_every != 0 && t % c.negative_every == c.negative_every - 1;
    data.slot_mapping.push_back(negative ? negatives[(t / c.negative_every) % std::size(negatives)] : slots[t]);
  }
  return data;
}

/// Token by token, head by head: the row of the key and of the value at
/// token_stride * t + head_dim * head of the inputs to the rows of its slot;
/// tokens with a negative slot skipped.
Bytes reference_paged_write(const PagedCase& c, const PagedWriteData& data) {
  Bytes pages = data.pages;
  const Bytes* inputs[2] = {&data.keys, &data.values};
  for (std::size_t t = 0; t < c.tokens; ++t) {
    if (data.slot_mapping[t] < 0) continue;
    const auto slot = static_cast<std::size_t>(data.slot_mapping[t]);
    for (std::size_t kind = 0; kind < 2; ++kind) {
      for (std::size_t h = 0; h < c.kv_heads; ++h) {
        const std::size_t from = c.misalign + (t * c.token_stride() + h * c.head_dim) * c.element();
        std::memcpy(pages.data() + c.row_byte(slot, kind, h), inputs[kind]->data() + from, c.row_bytes());
      }
    }
  }
  return pages;
}

Bytes run_paged_write(Backend& backend, const PagedCase& c, const PagedWriteData& data) {
  const DeviceBuffer pages(backend, data.pages);
  const DeviceBuffer keys(backend, data.keys);
  const DeviceBuffer values(backend, data.values);
  const DeviceBuffer slot_mapping(backend, bytes_of(data.slot_mapping));
  PagedWrite write;
  write.pages = c.pages(pages.at());
  write.keys = keys.at(c.misalign);
  write.values = values.at(c.misalign);
  write.token_stride = c.token_stride();
  write.tokens = c.tokens;
  write.slot_mapping = slot_mapping.as<std::int64_t>();
  backend.paged_write(write, Stream{});
  return pages.read();
}

std::vector<PagedCase> paged_write_cases() {
  using D = DType;
  using L = PagedLayout;
  return {
      {.name = "nhd_f32_head_dim_64", .tokens = 40, .negative_every = 5},
      {.name = "hnd_f32_head_dim_64", .layout = L::Hnd, .tokens = 40, .negative_every = 5},
      {.name = "nhd_f16_head_dim_1", .dtype = D::F16, .head_dim = 1, .kv_heads = 3, .tokens = 50},
      {.name = "hnd_bf16_head_dim_1", .layout = L::Hnd, .dtype = D::BF16, .head_dim = 1, .tokens = 50},
      {.name = "nhd_bf16_head_dim_3", .dtype = D::BF16, .head_dim = 3, .kv_heads = 3, .tokens = 30},
      {.name = "hnd_f16_head_dim_3", .layout = L::Hnd, .dtype = D::F16, .head_dim = 3, .tokens = 30},
      {.name = "nhd_bf16_head_dim_128_decode", .dtype = D::BF16, .head_dim = 128, .kv_heads = 8, .tokens = 24},
      {.name = "hnd_bf16_head_dim_128",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .head_dim = 128,
       .kv_heads = 4,
       .tokens = 60,
       .negative_every = 7},
      {.name = "nhd_f32_head_dim_129", .head_dim = 129, .tokens = 35, .negative_every = 4},
      {.name = "hnd_f16_head_dim_129", .layout = L::Hnd, .dtype = D::F16, .head_dim = 129, .tokens = 35},
      {.name = "nhd_page_size_1", .page_size = 1, .num_pages = 40, .tokens = 30, .negative_every = 3},
      {.name = "hnd_bf16_page_size_1",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .page_size = 1,
       .num_pages = 40,
       .tokens = 40},
      {.name = "nhd_fills_the_last_page", .tokens = 16, .first_slot = 48},
      {.name = "hnd_bf16_fills_the_last_page", .layout = L::Hnd, .dtype = D::BF16, .tokens = 16, .first_slot = 48},
      {.name = "nhd_bf16_fused_qkv_stride", .dtype = D::BF16, .head_dim = 128, .tokens = 20, .stride_pad = 512},
      {.name = "hnd_f16_odd_token_stride", .layout = L::Hnd, .dtype = D::F16, .tokens = 20, .stride_pad = 1},
      {.name = "nhd_f16_misaligned_inputs", .dtype = D::F16, .tokens = 20, .misalign = 2},
      {.name = "hnd_every_slot_negative", .layout = L::Hnd, .tokens = 10, .negative_every = 1},
      {.name = "nhd_page_size_3", .dtype = D::BF16, .head_dim = 5, .page_size = 3, .num_pages = 9, .tokens = 25},
      {.name = "hnd_bf16_prefill",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .head_dim = 128,
       .kv_heads = 4,
       .num_pages = 70,
       .tokens = 1100,
       .negative_every = 100},
      {.name = "nhd_no_tokens"},
      {.name = "hnd_no_tokens", .layout = L::Hnd},
  };
}

using BackendConformancePagedWrite = ConformanceTest<PagedCase>;

TEST_P(BackendConformancePagedWrite, CopiesEachTokensRowsToItsSlotSkippingNegativeSlots) {
  const PagedCase& c = param();
  const PagedWriteData data = paged_write_data(c);
  const Bytes expected =
      on_reference_device() ? reference_paged_write(c, data) : run_paged_write(cpu_backend(), c, data);
  expect_same_bytes(run_paged_write(backend(), c, data), expected, c.element(), "pages");
}

TEST_P(BackendConformancePagedWrite, LeavesEveryByteOutsideItsSlotsRowsAsItWas) {
  const PagedCase& c = param();
  const PagedWriteData data = paged_write_data(c);
  std::vector<bool> written(data.pages.size(), false);
  for (std::size_t t = 0; t < c.tokens; ++t) {
    if (data.slot_mapping[t] < 0) continue;
    for (std::size_t kind = 0; kind < 2; ++kind) {
      for (std::size_t h = 0; h < c.kv_heads; ++h) {
        const std::size_t first = c.row_byte(static_cast<std::size_t>(data.slot_mapping[t]), kind, h);
        std::fill_n(written.begin() + static_cast<std::ptrdiff_t>(first), c.row_bytes(), true);
      }
    }
  }
  Bytes actual = run_paged_write(backend(), c, data);
  for (std::size_t b = 0; b < actual.size(); ++b) {
    if (written[b]) actual[b] = data.pages[b];
  }
  expect_same_bytes(actual, data.pages, 1, "bytes outside the written rows");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformancePagedWrite, ::testing::ValuesIn(on_every_device(paged_write_cases())),
                         device_case_name<PagedCase>);

// ---- paged_gather ----------------------------------------------------------

struct PagedGatherData {
  Bytes pages;
  std::vector<std::int32_t> page_ids;  ///< distinct pages in random order, ceil(tokens / page_size) of them
  Bytes keys;                          ///< the outputs before the gather: misalign bytes, then the dense rows
  Bytes values;
};

PagedGatherData paged_gather_data(const PagedCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  const std::size_t output_bytes = c.misalign + c.kv_heads * c.tokens * c.row_bytes();
  PagedGatherData data{random_bytes(c.page_bytes(), seed),
                       {},
                       random_bytes(output_bytes, seed + 1),
                       random_bytes(output_bytes, seed + 2)};
  std::vector<std::int32_t> pages(c.num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(seed + 3));
  const std::size_t used = (c.tokens + c.page_size - 1) / c.page_size;
  EXPECT_LE(used, pages.size()) << "more pages than the pool";
  data.page_ids.assign(pages.begin(), pages.begin() + static_cast<std::ptrdiff_t>(std::min(used, pages.size())));
  return data;
}

/// Head by head, token by token: the row of token t (page page_ids[t /
/// page_size], offset t % page_size) to row head * tokens + t of the dense
/// keys and values.
std::pair<Bytes, Bytes> reference_paged_gather(const PagedCase& c, const PagedGatherData& data) {
  std::pair<Bytes, Bytes> out{data.keys, data.values};
  Bytes* outputs[2] = {&out.first, &out.second};
  for (std::size_t kind = 0; kind < 2; ++kind) {
    for (std::size_t h = 0; h < c.kv_heads; ++h) {
      for (std::size_t t = 0; t < c.tokens; ++t) {
        const std::size_t slot =
            static_cast<std::size_t>(data.page_ids[t / c.page_size]) * c.page_size + t % c.page_size;
        std::memcpy(outputs[kind]->data() + c.misalign + (h * c.tokens + t) * c.row_bytes(),
                    data.pages.data() + c.row_byte(slot, kind, h), c.row_bytes());
      }
    }
  }
  return out;
}

std::pair<Bytes, Bytes> run_paged_gather(Backend& backend, const PagedCase& c, const PagedGatherData& data) {
  const DeviceBuffer pages(backend, data.pages);
  const DeviceBuffer page_ids(backend, bytes_of(data.page_ids));
  const DeviceBuffer keys(backend, data.keys);
  const DeviceBuffer values(backend, data.values);
  PagedGather gather;
  gather.pages = c.pages(pages.at());
  gather.page_ids = page_ids.as<std::int32_t>();
  gather.tokens = c.tokens;
  gather.keys = keys.at(c.misalign);
  gather.values = values.at(c.misalign);
  backend.paged_gather(gather, Stream{});
  return {keys.read(), values.read()};
}

std::vector<PagedCase> paged_gather_cases() {
  using D = DType;
  using L = PagedLayout;
  return {
      {.name = "nhd_f32_head_dim_64_ends_mid_page", .tokens = 37},
      {.name = "hnd_f32_head_dim_64_ends_mid_page", .layout = L::Hnd, .tokens = 37},
      {.name = "nhd_f16_head_dim_1_whole_pages", .dtype = D::F16, .head_dim = 1, .kv_heads = 3, .tokens = 48},
      {.name = "hnd_bf16_head_dim_1", .layout = L::Hnd, .dtype = D::BF16, .head_dim = 1, .tokens = 50},
      {.name = "nhd_bf16_head_dim_3", .dtype = D::BF16, .head_dim = 3, .kv_heads = 3, .tokens = 30},
      {.name = "hnd_f16_head_dim_3_whole_pages", .layout = L::Hnd, .dtype = D::F16, .head_dim = 3, .tokens = 64},
      {.name = "nhd_bf16_head_dim_128", .dtype = D::BF16, .head_dim = 128, .kv_heads = 8, .tokens = 33},
      {.name = "hnd_bf16_head_dim_128_whole_pages",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .head_dim = 128,
       .kv_heads = 4,
       .tokens = 48},
      {.name = "nhd_f32_head_dim_129", .head_dim = 129, .tokens = 35},
      {.name = "hnd_f16_head_dim_129", .layout = L::Hnd, .dtype = D::F16, .head_dim = 129, .tokens = 17},
      {.name = "nhd_page_size_1", .page_size = 1, .num_pages = 40, .tokens = 29},
      {.name = "hnd_bf16_page_size_1",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .page_size = 1,
       .num_pages = 40,
       .tokens = 40},
      {.name = "nhd_one_token", .dtype = D::BF16, .head_dim = 128, .tokens = 1},
      {.name = "hnd_f16_misaligned_outputs", .layout = L::Hnd, .dtype = D::F16, .tokens = 20, .misalign = 2},
      {.name = "nhd_page_size_3", .dtype = D::BF16, .head_dim = 5, .page_size = 3, .num_pages = 9, .tokens = 25},
      {.name = "nhd_bf16_long_sequence",
       .dtype = D::BF16,
       .head_dim = 128,
       .kv_heads = 4,
       .num_pages = 70,
       .tokens = 1100},
      {.name = "nhd_no_tokens"},
      {.name = "hnd_no_tokens", .layout = L::Hnd},
  };
}

using BackendConformancePagedGather = ConformanceTest<PagedCase>;

TEST_P(BackendConformancePagedGather, CopiesEachTokensRowsFromItsPageIntoDenseHeads) {
  const PagedCase& c = param();
  const PagedGatherData data = paged_gather_data(c);
  const std::pair<Bytes, Bytes> expected =
      on_reference_device() ? reference_paged_gather(c, data) : run_paged_gather(cpu_backend(), c, data);
  const std::pair<Bytes, Bytes> actual = run_paged_gather(backend(), c, data);
  expect_same_bytes(actual.first, expected.first, c.element(), "keys");
  expect_same_bytes(actual.second, expected.second, c.element(), "values");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformancePagedGather, ::testing::ValuesIn(on_every_device(paged_gather_cases())),
                         device_case_name<PagedCase>);

// ===========================================================================
// Compressed records: encode_records, decode_records, score_records, attend_records
// ===========================================================================

struct RecordCase {
  std::string name;
  std::uint32_t dim = 64;
  std::uint32_t bits = 4;
  std::uint32_t projections = 16;  ///< m of the records (0: value records); of the keys in score and attend
  std::uint32_t value_bits = 3;    ///< attend: bits of the value records
  std::size_t heads = 2;           ///< key (and value) heads
  std::size_t tokens = 5;
  std::size_t capacity = 0;    ///< ring slots; 0: first + tokens (at least 1)
  std::size_t start = 0;       ///< slot of logical token 0
  std::size_t first = 0;       ///< encode: logical token of the first vector written
  DType dtype = DType::F32;    ///< encode: the vectors; score, attend: the queries
  std::size_t offset = 0;      ///< elements before the first vector or query (misaligns it)
  std::size_t token_pad = 0;   ///< encode: elements between consecutive vectors
  std::size_t group_size = 1;  ///< score, attend: query heads per key head
  bool qjl = false;            ///< score, attend: estimate_qjl rather than estimate_mse
  bool extremes = false;       ///< encode: vector (0, 0) zero, (0, 1) huge, (0, 2) subnormal (encode_input)

  std::size_t slots() const { return std::max<std::size_t>(capacity != 0 ? capacity : first + tokens, 1); }
  std::size_t query_heads() const { return heads * group_size; }
  std::size_t slot(std::size_t logical) const { return (start + logical) % slots(); }
};

constexpr float kInvAlpha = 1.0372f;  ///< estimate_mse's 1 / (1 - D), any value not 1
constexpr double kUnitRoundoff = 0x1p-24;

/// gamma_n = n u / (1 - n u), u = 2^-24: |fl(x) - x| <= gamma_n |x| for n
/// roundings in f32, and |fl(sum a_i) - sum a_i| <= gamma_(n-1) sum |a_i| for a
/// sum of n terms added in any order (Higham, Accuracy and Stability, ch. 3-4).
double gamma(double n) { return n * kUnitRoundoff / (1.0 - n * kUnitRoundoff); }

/// The ring of `c` with the records of `vectors` ([heads, tokens, dim] f32)
/// written by detail::encode_record at the slots of logical tokens [0,
/// tokens); every other slot holds random bytes.
Bytes encoded_ring(const RecordCase& c, const QuantiserTables& tables, const std::vector<float>& vectors,
                   std::uint32_t seed) {
  const detail::RecordLayout& layout = tables.layout;
  Bytes records = random_bytes(c.heads * c.slots() * layout.record_bytes, seed);
  std::vector<float> scratch(2 * static_cast<std::size_t>(layout.padded_dim));
  for (std::size_t h = 0; h < c.heads; ++h) {
    for (std::size_t t = 0; t < c.tokens; ++t) {
      detail::encode_record(vectors.data() + (h * c.tokens + t) * layout.dim, layout, tables.signs_of(h),
                            tables.centroids.data(), tables.boundaries.data(), tables.projections_of(h), scratch.data(),
                            records.data() + (h * c.slots() + c.slot(t)) * layout.record_bytes);
    }
  }
  return records;
}

// ---- encode_records ----------------------------------------------------------

std::size_t token_stride(const RecordCase& c) { return c.dim + c.token_pad; }
std::size_t head_stride(const RecordCase& c) { return c.tokens * token_stride(c); }

/// The vectors to encode: Gaussian elements of `dtype` (padding included).
/// With `extremes`, vector (0, 0) is zero, vector (0, 1) is scaled so that its
/// largest element is half the dtype's largest value (for F32 and BF16 its
/// norm then exceeds FLT_MAX and saturates, encode_record's one overflow), and
/// vector (0, 2) so that every element is below the dtype's smallest normal.
Bytes encode_input(const RecordCase& c) {
  std::vector<float> values = Gaussian(seed_of(c.name)).vector(c.offset + c.heads * head_stride(c));
  if (c.extremes) {
    const double largest[] = {0.0, 0.5 * largest_finite(c.dtype), c.dtype == DType::F16 ? 0x1p-16 : 0x1p-128};
    for (std::size_t t = 0; t < std::size(largest); ++t) {
      float* x = values.data() + c.offset + t * token_stride(c);
      double magnitude = 0.0;
      for (std::size_t i = 0; i < c.dim; ++i) magnitude = std::max(magnitude, std::fabs(static_cast<double>(x[i])));
      for (std::size_t i = 0; i < c.dim; ++i) x[i] = static_cast<float>(x[i] * (largest[t] / magnitude));
    }
  }
  return elements_of(values, c.dtype);
}

/// Vector by vector: the elements as f32, then detail::encode_record into the
/// slot of logical token first + t.
Bytes reference_encode(const RecordCase& c, const QuantiserTables& tables, const Bytes& input, Bytes records) {
  const detail::RecordLayout& layout = tables.layout;
  std::vector<float> x(layout.dim);
  std::vector<float> scratch(2 * static_cast<std::size_t>(layout.padded_dim));
  for (std::size_t h = 0; h < c.heads; ++h) {
    for (std::size_t t = 0; t < c.tokens; ++t) {
      for (std::size_t i = 0; i < layout.dim; ++i) {
        x[i] = load_as_f32(input.data(), c.dtype, c.offset + h * head_stride(c) + t * token_stride(c) + i);
      }
      detail::encode_record(x.data(), layout, tables.signs_of(h), tables.centroids.data(), tables.boundaries.data(),
                            tables.projections_of(h), scratch.data(),
                            records.data() + (h * c.slots() + c.slot(c.first + t)) * layout.record_bytes);
    }
  }
  return records;
}

Bytes run_encode(Backend& backend, const RecordCase& c, const QuantiserTables& tables, const Bytes& input,
                 const Bytes& records) {
  const DeviceTables device_tables(backend, tables);
  const DeviceBuffer vectors(backend, input);
  const DeviceBuffer ring(backend, records);
  RecordEncode encode;
  encode.ring = device_tables.ring(ring, c.heads, c.slots(), c.start);
  encode.first = c.first;
  encode.tokens = c.tokens;
  encode.input = vectors.at(c.offset * dtype_size(c.dtype));
  encode.dtype = c.dtype;
  encode.head_stride = head_stride(c);
  encode.token_stride = token_stride(c);
  backend.encode_records(encode, Stream{});
  return ring.read();
}

std::vector<RecordCase> encode_cases() {
  using D = DType;
  const std::size_t warps = encode_warps_in_flight();
  const std::string below = std::to_string(warps - 1);
  const std::string at = std::to_string(warps);
  const std::string above = std::to_string(warps + 1);
  return {
      {.name = "keys_dim128_bits4", .dim = 128, .projections = 32, .heads = 4, .tokens = 10},
      {.name = "values_dim128_bits4_bf16", .dim = 128, .projections = 0, .heads = 4, .tokens = 10, .dtype = D::BF16},
      {.name = "bits1_f16", .bits = 1, .dtype = D::F16},
      {.name = "bits2_m7_bf16", .bits = 2, .projections = 7, .dtype = D::BF16},
      {.name = "bits3_m24", .bits = 3, .projections = 24},
      {.name = "bits5_values", .bits = 5, .projections = 0},
      {.name = "bits6_m1", .bits = 6, .projections = 1},
      {.name = "bits7_m33_f16", .bits = 7, .projections = 33, .dtype = D::F16},
      {.name = "bits8_m64_bf16", .bits = 8, .projections = 64, .dtype = D::BF16},
      {.name = "odd_dim77_f16_offset_1_padded",
       .dim = 77,
       .bits = 3,
       .projections = 20,
       .dtype = D::F16,
       .offset = 1,
       .token_pad = 3},
      {.name = "odd_dim5_bf16_offset_1_padded",
       .dim = 5,
       .projections = 3,
       .dtype = D::BF16,
       .offset = 1,
       .token_pad = 1},
      {.name = "odd_dim3_offset_1", .dim = 3, .bits = 2, .projections = 5, .offset = 1},
      {.name = "dim2", .dim = 2, .bits = 1, .projections = 2},
      {.name = "ring_wraps",
       .dim = 32,
       .projections = 8,
       .heads = 3,
       .tokens = 6,
       .capacity = 12,
       .start = 9,
       .first = 2},
      {.name = "extreme_vectors", .tokens = 4, .extremes = true},
      {.name = "extreme_vectors_f16", .tokens = 4, .dtype = D::F16, .extremes = true},
      {.name = "extreme_vectors_bf16", .tokens = 4, .dtype = D::BF16, .extremes = true},
      {.name = "vectors_" + below, .dim = 4, .bits = 2, .projections = 8, .heads = 1, .tokens = warps - 1},
      {.name = "vectors_" + at + "_two_heads", .dim = 4, .bits = 3, .projections = 8, .heads = 2, .tokens = warps / 2},
      {.name = "vectors_" + above + "_three_heads_values",
       .dim = 4,
       .bits = 2,
       .projections = 0,
       .heads = 3,
       .tokens = (warps + 1) / 3},
      {.name = "vectors_" + above + "_ring_wraps",
       .dim = 6,
       .projections = 4,
       .heads = 1,
       .tokens = warps + 1,
       .capacity = warps + 808,
       .start = warps - 192,
       .first = 500},
      {.name = "shared_work_space_largest_p", .dim = cuda::kEncodeSharedMaxP, .projections = 32, .tokens = 3},
      {.name = "global_work_space_smallest_p_f16", .dim = kGlobalEncodeDim, .tokens = 3, .dtype = D::F16},
      {.name = "global_work_space_vectors_" + above + "_bf16",
       .dim = kGlobalEncodeDim,
       .bits = 2,
       .projections = 0,
       .heads = 1,
       .tokens = warps + 1,
       .dtype = D::BF16},
      {.name = "no_tokens", .tokens = 0},
      {.name = "head_dim_4096", .dim = 4096, .projections = 64, .heads = 2, .tokens = 2},
      {.name = "head_dim_8192_bf16",
       .dim = 8192,
       .bits = 3,
       .projections = 32,
       .heads = 1,
       .tokens = 2,
       .dtype = D::BF16},
      {.name = "head_dim_largest", .dim = kLargestHeadDim, .bits = 2, .projections = 8, .heads = 1, .tokens = 1},
  };
}

using BackendConformanceEncodeRecords = ConformanceTest<RecordCase>;

TEST_P(BackendConformanceEncodeRecords, WritesTheBytesOfEncodeRecordAtEachSlot) {
  const RecordCase& c = param();
  const QuantiserTables tables = make_tables(c.dim, c.bits, c.projections, c.heads, seed_of(c.name) + 1);
  const Bytes input = encode_input(c);
  const Bytes records = random_bytes(c.heads * c.slots() * tables.layout.record_bytes, seed_of(c.name) + 2);
  const Bytes expected = on_reference_device() ? reference_encode(c, tables, input, records)
                                               : run_encode(cpu_backend(), c, tables, input, records);
  expect_same_bytes(run_encode(backend(), c, tables, input, records), expected, tables.layout.record_bytes, "records");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceEncodeRecords, ::testing::ValuesIn(on_every_device(encode_cases())),
                         device_case_name<RecordCase>);

// ---- decode_records ----------------------------------------------------------

/// Record by record: detail::decode_record of logical token t of head h into
/// out[(h * tokens + t) * dim].
Bytes reference_decode(const RecordCase& c, const QuantiserTables& tables, const Bytes& records, Bytes out) {
  const detail::RecordLayout& layout = tables.layout;
  std::vector<float> decoded(c.heads * c.tokens * layout.dim);
  std::vector<float> scratch(layout.padded_dim);
  for (std::size_t h = 0; h < c.heads; ++h) {
    for (std::size_t t = 0; t < c.tokens; ++t) {
      detail::decode_record(records.data() + (h * c.slots() + c.slot(t)) * layout.record_bytes, layout,
                            tables.signs_of(h), tables.centroids.data(), scratch.data(),
                            decoded.data() + (h * c.tokens + t) * layout.dim);
    }
  }
  return overwritten(std::move(out), decoded);
}

Bytes run_decode(Backend& backend, const RecordCase& c, const QuantiserTables& tables, const Bytes& records,
                 const Bytes& out) {
  const DeviceTables device_tables(backend, tables);
  const DeviceBuffer ring(backend, records);
  const DeviceBuffer decoded(backend, out);
  backend.decode_records(device_tables.ring(ring, c.heads, c.slots(), c.start), c.tokens, decoded.as<float>(),
                         Stream{});
  return decoded.read();
}

std::vector<RecordCase> decode_cases() {
  const std::size_t warps = encode_warps_in_flight();
  return {
      {.name = "values_dim128_bits4", .dim = 128, .projections = 0, .heads = 4, .tokens = 10},
      {.name = "keys_bits3_m16", .bits = 3},
      {.name = "bits1", .bits = 1, .projections = 0},
      {.name = "bits2", .bits = 2},
      {.name = "bits5", .bits = 5, .projections = 0},
      {.name = "bits8", .bits = 8, .projections = 9},
      {.name = "odd_dim77", .dim = 77, .bits = 3, .projections = 0},
      {.name = "odd_dim5", .dim = 5, .projections = 3},
      {.name = "ring_wraps", .dim = 32, .heads = 3, .tokens = 10, .capacity = 12, .start = 9},
      {.name = "vectors_" + std::to_string(warps - 1),
       .dim = 4,
       .bits = 2,
       .projections = 0,
       .heads = 1,
       .tokens = warps - 1},
      {.name = "vectors_" + std::to_string(warps) + "_two_heads",
       .dim = 4,
       .bits = 3,
       .projections = 0,
       .heads = 2,
       .tokens = warps / 2},
      {.name = "vectors_" + std::to_string(warps + 1) + "_three_heads_ring_wraps",
       .dim = 6,
       .projections = 0,
       .heads = 3,
       .tokens = (warps + 1) / 3,
       .capacity = 2800,
       .start = 2000},
      {.name = "shared_work_space_largest_p", .dim = cuda::kDecodeSharedMaxP, .projections = 0, .tokens = 3},
      {.name = "global_work_space_smallest_p", .dim = cuda::kDecodeSharedMaxP + 2, .tokens = 3},
      {.name = "no_tokens", .tokens = 0, .capacity = 4},
      {.name = "head_dim_4096", .dim = 4096, .projections = 0, .heads = 2, .tokens = 2},
      {.name = "head_dim_8192", .dim = 8192, .bits = 3, .projections = 32, .heads = 1, .tokens = 2},
      {.name = "head_dim_largest", .dim = kLargestHeadDim, .bits = 2, .projections = 0, .heads = 1, .tokens = 1},
  };
}

using BackendConformanceDecodeRecords = ConformanceTest<RecordCase>;

TEST_P(BackendConformanceDecodeRecords, ReconstructsEachRecordAsDecodeRecord) {
  const RecordCase& c = param();
  const QuantiserTables tables = make_tables(c.dim, c.bits, c.projections, c.heads, seed_of(c.name) + 1);
  const Bytes records =
      encoded_ring(c, tables, Gaussian(seed_of(c.name)).vector(c.heads * c.tokens * c.dim), seed_of(c.name) + 2);
  const Bytes out = random_bytes(c.heads * c.tokens * c.dim * sizeof(float), seed_of(c.name) + 3);
  const Bytes expected = on_reference_device() ? reference_decode(c, tables, records, out)
                                               : run_decode(cpu_backend(), c, tables, records, out);
  expect_same_bytes(run_decode(backend(), c, tables, records, out), expected, sizeof(float), "decoded vectors");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceDecodeRecords, ::testing::ValuesIn(on_every_device(decode_cases())),
                         device_case_name<RecordCase>);

// ---- score_records and attend_records: shared inputs ---------------------------

/// What score_records and attend_records read: key records (and, for attend,
/// value records) in rings of the case's geometry, and the queries.
struct QueryInputs {
  std::vector<float> keys;  ///< [heads, tokens, dim], the vectors behind the key records
  QuantiserTables key_tables;
  Bytes key_records;
  QuantiserTables value_tables;
  Bytes value_records;
  Bytes queries;  ///< `offset` elements, then [query_heads, dim] of dtype
};

/// Gaussian keys and values; queries Gaussian, plus half the key of token 0 of
/// their key head when `correlated` (a large score per head, far above the
/// tolerance, whatever head_dim).
QueryInputs query_inputs(const RecordCase& c, bool correlated) {
  const std::uint32_t seed = seed_of(c.name);
  QueryInputs in;
  in.keys = Gaussian(seed).vector(c.heads * c.tokens * c.dim);
  in.key_tables = make_tables(c.dim, c.bits, c.projections, c.heads, seed + 1);
  in.key_records = encoded_ring(c, in.key_tables, in.keys, seed + 2);
  in.value_tables = make_tables(c.dim, c.value_bits, 0, c.heads, seed + 3);
  in.value_records = encoded_ring(c, in.value_tables, Gaussian(seed + 4).vector(c.heads * c.tokens * c.dim), seed + 5);
  std::vector<float> queries = Gaussian(seed + 6).vector(c.offset + c.query_heads() * c.dim);
  if (correlated && c.tokens > 0) {
    for (std::size_t q = 0; q < c.query_heads(); ++q) {
      const float* key = in.keys.data() + (q / c.group_size) * c.tokens * c.dim;
      for (std::size_t i = 0; i < c.dim; ++i) queries[c.offset + q * c.dim + i] += 0.5f * key[i];
    }
  }
  in.queries = elements_of(queries, c.dtype);
  return in;
}

float query_scale(const RecordCase& c) { return 1.0f / std::sqrt(static_cast<float>(c.dim)); }

/// A query as every backend prepares it: its elements as f32, rotated by
/// detail::rotate into its key head's domain, and for QJL projected on the
/// head's matrix (in f32, i ascending, and exactly).
struct PreparedQuery {
  std::vector<float> rotated;
  std::vector<float> projected;
  std::vector<double> projected_exact;
  double projection_magnitude = 0.0;  ///< sum over j and i of |S_ji qr_i|
};

PreparedQuery prepare_query(const RecordCase& c, const QueryInputs& in, std::size_t q) {
  const QuantiserTables& tables = in.key_tables;
  const std::size_t p = tables.layout.padded_dim;
  const std::size_t m = tables.layout.projections;
  const std::size_t head = q / c.group_size;
  std::vector<float> x(c.dim);
  for (std::size_t i = 0; i < c.dim; ++i) x[i] = load_as_f32(in.queries.data(), c.dtype, c.offset + q * c.dim + i);
  PreparedQuery prepared{std::vector<float>(p), std::vector<float>(m), std::vector<double>(m)};
  detail::rotate(x.data(), c.dim, prepared.rotated.data(), tables.signs_of(head), static_cast<std::uint32_t>(p));
  if (!c.qjl) return prepared;
  for (std::size_t j = 0; j < m; ++j) {
    const float* row = tables.projections_of(head) + j * p;
    float sum = 0.0f;
    double exact = 0.0;
    for (std::size_t i = 0; i < p; ++i) {
      sum += row[i] * prepared.rotated[i];
      exact += static_cast<double>(row[i]) * prepared.rotated[i];
      prepared.projection_magnitude += std::fabs(static_cast<double>(row[i]) * prepared.rotated[i]);
    }
    prepared.projected[j] = sum;
    prepared.projected_exact[j] = exact;
  }
  return prepared;
}

/// A score computed exactly (in double, from the f32 prepared query and the
/// record), and the sum of the absolute values of its terms.
struct ExactScore {
  double value = 0.0;
  double magnitude = 0.0;
};

ExactScore exact_score(const RecordCase& c, const QuantiserTables& tables, const PreparedQuery& query,
                       const std::uint8_t* record) {
  const detail::RecordLayout& layout = tables.layout;
  const double p = layout.padded_dim;
  double dot = 0.0;
  double dot_magnitude = 0.0;
  for (std::uint32_t i = 0; i < layout.padded_dim; ++i) {
    const double term =
        static_cast<double>(query.rotated[i]) * tables.centroids[detail::unpack_code(record, i, layout.bits)];
    dot += term;
    dot_magnitude += std::fabs(term);
  }
  const double factor = static_cast<double>(query_scale(c)) * detail::load_f32(record + layout.norm_offset);
  if (!c.qjl) {
    const double weight = factor * kInvAlpha / std::sqrt(p);
    return {weight * dot, std::fabs(weight) * dot_magnitude};
  }
  double sketch = 0.0;
  for (std::uint32_t j = 0; j < layout.projections; ++j) {
    const bool positive = ((record[layout.sign_offset + j / 8] >> (j % 8)) & 1u) != 0u;
    sketch += positive ? query.projected_exact[j] : -query.projected_exact[j];
  }
  const double correction =
      detail::load_f32(record + layout.residual_norm_offset) * std::sqrt(std::acos(-1.0) / 2.0) / layout.projections;
  return {factor * (dot / std::sqrt(p) + correction * sketch),
          std::fabs(factor) * (dot_magnitude / std::sqrt(p) + std::fabs(correction) * query.projection_magnitude)};
}

/// Bound on |fl(score) - score| for a score computed in f32 in any order: a
/// sum of p products (the centroid dot), m sums of p products (the projected
/// query) and a sum of m terms (the sketch), then a few products; each term
/// passes at most p + m + 16 roundings, so the error is at most
/// gamma_(p + m + 16) times the sum of the absolute values of the terms. The
/// rotation is the shared detail::rotate, whose adds and multiplies every
/// backend performs in the same order (rotation.hpp); should a backend
/// round one of them differently, a few ulps of a rotated coordinate move a
/// score by a few u times its magnitude, well inside this bound.
double score_error_bound(const RecordCase& c, const QuantiserTables& tables, const ExactScore& score) {
  return gamma(static_cast<double>(tables.layout.padded_dim) + (c.qjl ? tables.layout.projections : 0) + 16) *
         score.magnitude;
}

RecordQuery query_of(const RecordCase& c, const DeviceTables& tables, const DeviceBuffer& records,
                     const DeviceBuffer& queries) {
  RecordQuery query;
  query.keys = tables.ring(records, c.heads, c.slots(), c.start);
  query.tokens = c.tokens;
  query.queries = queries.at(c.offset * dtype_size(c.dtype));
  query.dtype = c.dtype;
  query.query_heads = c.query_heads();
  query.group_size = c.group_size;
  query.qjl = c.qjl;
  query.inv_alpha = kInvAlpha;
  query.scale = query_scale(c);
  return query;
}

// ---- score_records -------------------------------------------------------------

/// Per query head and token: the prepared query, then detail::estimate_qjl or
/// detail::estimate_mse of the token's key record, times the scale.
Bytes reference_scores(const RecordCase& c, const QueryInputs& in, Bytes out) {
  const QuantiserTables& tables = in.key_tables;
  std::vector<float> scores(c.query_heads() * c.tokens);
  for (std::size_t q = 0; q < c.query_heads(); ++q) {
    const PreparedQuery prepared = prepare_query(c, in, q);
    for (std::size_t t = 0; t < c.tokens; ++t) {
      const std::uint8_t* record =
          in.key_records.data() + ((q / c.group_size) * c.slots() + c.slot(t)) * tables.layout.record_bytes;
      const float estimate = c.qjl ? detail::estimate_qjl(record, tables.layout, tables.centroids.data(),
                                                          prepared.rotated.data(), prepared.projected.data())
                                   : detail::estimate_mse(record, tables.layout, tables.centroids.data(),
                                                          prepared.rotated.data(), kInvAlpha);
      scores[q * c.tokens + t] = estimate * query_scale(c);
    }
  }
  return overwritten(std::move(out), scores);
}

/// Per score, twice score_error_bound: the answer and the reference are two
/// f32 evaluations, each within the bound of the exact score.
std::vector<double> score_tolerances(const RecordCase& c, const QueryInputs& in) {
  std::vector<double> tolerance(c.query_heads() * c.tokens);
  for (std::size_t q = 0; q < c.query_heads(); ++q) {
    const PreparedQuery prepared = prepare_query(c, in, q);
    for (std::size_t t = 0; t < c.tokens; ++t) {
      const std::uint8_t* record =
          in.key_records.data() + ((q / c.group_size) * c.slots() + c.slot(t)) * in.key_tables.layout.record_bytes;
      tolerance[q * c.tokens + t] =
          2.0 * score_error_bound(c, in.key_tables, exact_score(c, in.key_tables, prepared, record));
    }
  }
  return tolerance;
}

Bytes run_scores(Backend& backend, const RecordCase& c, const QueryInputs& in, const Bytes& out) {
  const DeviceTables tables(backend, in.key_tables);
  const DeviceBuffer records(backend, in.key_records);
  const DeviceBuffer queries(backend, in.queries);
  const DeviceBuffer scores(backend, out);
  backend.score_records(query_of(c, tables, records, queries), scores.as<float>(), Stream{});
  return scores.read();
}

std::vector<RecordCase> score_cases() {
  using D = DType;
  const std::size_t tile = cuda::kScoreTileTokens;
  const std::string below = std::to_string(tile - 1);
  const std::string at = std::to_string(tile);
  const std::string above = std::to_string(tile + 1);
  return {
      {.name = "mse_tokens_1", .tokens = 1},
      {.name = "mse_tokens_" + below, .tokens = tile - 1},
      {.name = "mse_tokens_" + at + "_f16", .tokens = tile, .dtype = D::F16},
      {.name = "mse_tokens_" + above + "_bf16", .tokens = tile + 1, .dtype = D::BF16},
      {.name = "qjl_tokens_" + below, .tokens = tile - 1, .qjl = true},
      {.name = "qjl_tokens_" + at, .tokens = tile, .qjl = true},
      {.name = "qjl_tokens_" + above + "_bf16", .tokens = tile + 1, .dtype = D::BF16, .qjl = true},
      {.name = "gqa_group_4_ring_wraps", .tokens = tile + 1, .capacity = 200, .start = 150, .group_size = 4},
      {.name = "mqa_group_8_qjl", .heads = 1, .tokens = 64, .group_size = 8, .qjl = true},
      {.name = "bits1_qjl", .bits = 1, .projections = 8, .qjl = true},
      {.name = "bits3_f16", .bits = 3, .tokens = 40, .dtype = D::F16},
      {.name = "bits8", .bits = 8, .tokens = 40},
      {.name = "bits2_m7_qjl", .bits = 2, .projections = 7, .tokens = 40, .qjl = true},
      {.name = "odd_dim77_f16_offset_1", .dim = 77, .tokens = 30, .dtype = D::F16, .offset = 1},
      {.name = "odd_dim5_bf16_offset_1_qjl",
       .dim = 5,
       .projections = 3,
       .tokens = 30,
       .dtype = D::BF16,
       .offset = 1,
       .qjl = true},
      {.name = "keys_without_projections", .projections = 0, .tokens = 30},
      {.name = "largest_staged_record_tokens_" + above,
       .dim = kStagingDim,
       .bits = kStagingBits,
       .projections = kStagedProjections,
       .tokens = tile + 1},
      {.name = "smallest_unstaged_record_tokens_" + above + "_qjl",
       .dim = kStagingDim,
       .bits = kStagingBits,
       .projections = kStagedProjections + 1,
       .tokens = tile + 1,
       .qjl = true},
      {.name = "no_tokens", .tokens = 0, .capacity = 4},
      {.name = "head_dim_4096_bits6_qjl", .dim = 4096, .bits = 6, .projections = 64, .tokens = 3, .qjl = true},
      {.name = "head_dim_8192_gqa", .dim = 8192, .projections = 32, .heads = 1, .tokens = 3, .group_size = 2},
      {.name = "head_dim_largest", .dim = kLargestHeadDim, .bits = 2, .projections = 8, .heads = 1, .tokens = 1},
      {.name = "head_dim_largest_bits8_qjl",
       .dim = kLargestHeadDim,
       .bits = 8,
       .projections = 8,
       .heads = 1,
       .tokens = 1,
       .qjl = true},
  };
}

using BackendConformanceScoreRecords = ConformanceTest<RecordCase>;

TEST_P(BackendConformanceScoreRecords, EstimatesEveryTokenForEveryQueryHeadToRounding) {
  const RecordCase& c = param();
  const QueryInputs in = query_inputs(c, /*correlated=*/true);
  const Bytes out = nan_bytes(c.query_heads() * c.tokens * sizeof(float), seed_of(c.name) + 7);
  const Bytes expected = on_reference_device() ? reference_scores(c, in, out) : run_scores(cpu_backend(), c, in, out);
  expect_floats_near(run_scores(backend(), c, in, out), expected, score_tolerances(c, in), "scores");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceScoreRecords, ::testing::ValuesIn(on_every_device(score_cases())),
                         device_case_name<RecordCase>);

// ---- attend_records ------------------------------------------------------------

/// Whether sign bit k of a rotation is set (-1).
bool sign_bit(const std::uint32_t* words, std::size_t k) { return ((words[k / 32] >> (k % 32)) & 1u) != 0u; }

/// Unnormalised Walsh-Hadamard transform in double.
void hadamard(std::vector<double>& x) {
  for (std::size_t h = 1; h < x.size(); h *= 2) {
    for (std::size_t i = 0; i < x.size(); i += 2 * h) {
      for (std::size_t j = i; j < i + h; ++j) {
        const double a = x[j];
        const double b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

/// x = D1 H D2 H y / p in double, truncated to `dim` (the inverse rotation of rotation.hpp).
std::vector<double> unrotate_exact(std::vector<double> y, const std::uint32_t* signs, std::size_t dim) {
  const std::size_t p = y.size();
  hadamard(y);
  for (std::size_t i = 0; i < p; ++i) y[i] = sign_bit(signs, p + i) ? -y[i] : y[i];
  hadamard(y);
  std::vector<double> x(dim);
  for (std::size_t i = 0; i < dim; ++i) x[i] = (sign_bit(signs, i) ? -y[i] : y[i]) / static_cast<double>(p);
  return x;
}

/// The attention output of one query head in double, and the bound on the l2
/// distance of an f32 evaluation from it.
struct ExactAttention {
  std::vector<double> out;
  double error_bound = 0.0;
};

/// softmax(s) . v in double: s_t the exact scores, v_t the decoded value
/// records (centroids times norm / sqrt(p), rotated back), accumulated in the
/// rotated domain and rotated back once (the rotation is linear).
///
/// The bound, with B = max_t ||v_t||_2 (every output is a convex combination
/// of the v_t) and T tokens:
/// - weights: each f32 score is within d_t = score_error_bound of s_t; with
///   the rounding of s_t - max (u |s_t - max|) and of exp (2 u), every log
///   weight is within e = max_t d_t + u (|s_t| + |max|) + 3 u, so each
///   normalised weight within a factor exp(2e) and the output within
///   (exp(2e) - 1) B. With one token the weight is exactly 1 (exp(0)).
/// - accumulation: the weighted sum of T value records per rotated
///   coordinate, its normalisation by the sum of T weights, and any split of
///   the tokens with its rescaled combine (flash decoding) pass each term
///   through at most 2T + 16 roundings: at most gamma_(2T+16) B in l2.
/// - the inverse rotation in f32: 2 log2(p) butterfly stages and 2 scalings,
///   each adding u relative in l2 (the butterflies are orthogonal up to a
///   scale): gamma_(2 log2(p) + 4) B.
ExactAttention exact_attention(const RecordCase& c, const QueryInputs& in, std::size_t q) {
  const std::size_t head = q / c.group_size;
  const PreparedQuery prepared = prepare_query(c, in, q);
  std::vector<ExactScore> scores;
  double max_score = -std::numeric_limits<double>::infinity();
  double max_bound = 0.0;
  for (std::size_t t = 0; t < c.tokens; ++t) {
    const std::uint8_t* record =
        in.key_records.data() + (head * c.slots() + c.slot(t)) * in.key_tables.layout.record_bytes;
    scores.push_back(exact_score(c, in.key_tables, prepared, record));
    max_score = std::max(max_score, scores.back().value);
    max_bound = std::max(max_bound, score_error_bound(c, in.key_tables, scores.back()));
  }
  const detail::RecordLayout& layout = in.value_tables.layout;
  const std::size_t p = layout.padded_dim;
  std::vector<double> accumulator(p, 0.0);
  double total = 0.0;
  double largest_value = 0.0;
  double log_weight_error = 0.0;
  for (std::size_t t = 0; t < c.tokens; ++t) {
    const double weight = std::exp(scores[t].value - max_score);
    total += weight;
    log_weight_error =
        std::max(log_weight_error,
                 max_bound + kUnitRoundoff * (std::fabs(scores[t].value) + std::fabs(max_score)) + 3 * kUnitRoundoff);
    const std::uint8_t* record = in.value_records.data() + (head * c.slots() + c.slot(t)) * layout.record_bytes;
    const double scale = detail::load_f32(record + layout.norm_offset) / std::sqrt(static_cast<double>(p));
    double squared = 0.0;
    for (std::uint32_t i = 0; i < p; ++i) {
      const double value = scale * in.value_tables.centroids[detail::unpack_code(record, i, layout.bits)];
      accumulator[i] += weight * value;
      squared += value * value;
    }
    largest_value = std::max(largest_value, std::sqrt(squared));
  }
  for (double& a : accumulator) a /= total;
  ExactAttention exact{unrotate_exact(accumulator, in.value_tables.signs_of(head), c.dim), 0.0};
  const double weights = c.tokens == 1 ? 0.0 : std::expm1(2.0 * log_weight_error);
  const double tokens = static_cast<double>(c.tokens);
  exact.error_bound =
      (weights + gamma(2.0 * tokens + 16.0) + gamma(2.0 * std::log2(static_cast<double>(p)) + 4.0)) * largest_value;
  return exact;
}

struct AttentionReference {
  Bytes out;
  std::vector<double> bound;  ///< per query head, on the l2 distance of the backend's output from `out`
};

/// On the reference device, the exact outputs rounded to f32 with their
/// bounds; elsewhere CpuBackend's outputs with twice the bounds (each backend
/// within one bound of the exact output).
AttentionReference attention_reference(const RecordCase& c, const QueryInputs& in, const Bytes& out,
                                       bool exact_reference) {
  AttentionReference reference{out, {}};
  std::vector<float> outputs(c.query_heads() * c.dim);
  for (std::size_t q = 0; q < c.query_heads(); ++q) {
    const ExactAttention exact = exact_attention(c, in, q);
    for (std::size_t i = 0; i < c.dim; ++i) outputs[q * c.dim + i] = static_cast<float>(exact.out[i]);
    // Rounding the exact output to f32 moves it by at most u ||out||_2 <= u B.
    reference.bound.push_back(exact_reference ? exact.error_bound * (1.0 + kUnitRoundoff) : 2.0 * exact.error_bound);
  }
  if (exact_reference) reference.out = overwritten(out, outputs);
  return reference;
}

Bytes run_attention(Backend& backend, const RecordCase& c, const QueryInputs& in, const Bytes& out) {
  const DeviceTables key_tables(backend, in.key_tables);
  const DeviceTables value_tables(backend, in.value_tables);
  const DeviceBuffer keys(backend, in.key_records);
  const DeviceBuffer values(backend, in.value_records);
  const DeviceBuffer queries(backend, in.queries);
  const DeviceBuffer outputs(backend, out);
  backend.attend_records(query_of(c, key_tables, keys, queries), value_tables.ring(values, c.heads, c.slots(), c.start),
                         outputs.as<float>(), Stream{});
  return outputs.read();
}

std::vector<RecordCase> attend_cases() {
  using D = DType;
  const std::size_t split = detail::kAttendChunkTokens;
  return {
      {.name = "tokens_1", .tokens = 1},
      {.name = "tokens_" + std::to_string(split - 1), .tokens = split - 1},
      {.name = "tokens_" + std::to_string(split) + "_f16", .tokens = split, .dtype = D::F16},
      {.name = "tokens_" + std::to_string(split + 1) + "_bf16", .tokens = split + 1, .dtype = D::BF16},
      {.name = "tokens_" + std::to_string(2 * split - 1) + "_qjl", .tokens = 2 * split - 1, .qjl = true},
      {.name = "tokens_" + std::to_string(2 * split + 1) + "_qjl_gqa",
       .tokens = 2 * split + 1,
       .group_size = 4,
       .qjl = true},
      {.name = "tokens_" + std::to_string(split) + "_ring_wraps",
       .tokens = split,
       .capacity = split + 44,
       .start = split - 56},
      {.name = "full_ring_wraps_gqa", .tokens = split + 1, .capacity = split + 1, .start = 100, .group_size = 2},
      {.name = "mqa_group_8", .heads = 1, .tokens = 100, .group_size = 8},
      {.name = "staged_values_tokens_" + std::to_string(split + 1),
       .dim = kValueStagingDim,
       .value_bits = kStagedValueBits,
       .tokens = split + 1},
      {.name = "unstaged_values_tokens_" + std::to_string(split + 1) + "_qjl",
       .dim = kValueStagingDim,
       .value_bits = kStagedValueBits + 1,
       .tokens = split + 1,
       .qjl = true},
      {.name = "key_bits1_value_bits8", .bits = 1, .projections = 8, .value_bits = 8, .tokens = 40},
      {.name = "key_bits8_value_bits1_qjl", .bits = 8, .value_bits = 1, .tokens = 40, .qjl = true},
      {.name = "odd_dim77_f16_offset_1", .dim = 77, .tokens = 50, .dtype = D::F16, .offset = 1},
      {.name = "odd_dim5_bf16_offset_1_qjl",
       .dim = 5,
       .projections = 3,
       .tokens = 20,
       .dtype = D::BF16,
       .offset = 1,
       .qjl = true},
      {.name = "head_dim_4096_bits6_qjl", .dim = 4096, .bits = 6, .projections = 64, .tokens = 3, .qjl = true},
      {.name = "head_dim_8192_gqa", .dim = 8192, .projections = 32, .heads = 1, .tokens = 3, .group_size = 2},
      {.name = "head_dim_largest",
       .dim = kLargestHeadDim,
       .bits = 2,
       .projections = 8,
       .value_bits = 2,
       .heads = 1,
       .tokens = 1},
      {.name = "head_dim_largest_bits8_qjl",
       .dim = kLargestHeadDim,
       .bits = 8,
       .projections = 8,
       .value_bits = 2,
       .heads = 1,
       .tokens = 1,
       .qjl = true},
  };
}

using BackendConformanceAttendRecords = ConformanceTest<RecordCase>;

TEST_P(BackendConformanceAttendRecords, WeighsDecodedValuesBySoftmaxOfScoresToRounding) {
  const RecordCase& c = param();
  const QueryInputs in = query_inputs(c, /*correlated=*/false);
  const Bytes out = nan_bytes(c.query_heads() * c.dim * sizeof(float), seed_of(c.name) + 7);
  const AttentionReference reference = attention_reference(
      c, in, on_reference_device() ? out : run_attention(cpu_backend(), c, in, out), on_reference_device());
  const Bytes actual = run_attention(backend(), c, in, out);
  const std::vector<float> got = values_of<float>(actual, c.query_heads() * c.dim);
  const std::vector<float> want = values_of<float>(reference.out, c.query_heads() * c.dim);
  for (std::size_t q = 0; q < c.query_heads(); ++q) {
    double squared = 0.0;
    for (std::size_t i = q * c.dim; i < (q + 1) * c.dim; ++i) {
      const double error = static_cast<double>(got[i]) - want[i];
      squared += error * error;
    }
    EXPECT_LE(std::sqrt(squared), reference.bound[q]) << "query head " << q << ": l2 distance from the reference";
  }
  const std::size_t payload = c.query_heads() * c.dim * sizeof(float);
  expect_same_bytes(Bytes(actual.begin() + static_cast<std::ptrdiff_t>(payload), actual.end()),
                    Bytes(reference.out.begin() + static_cast<std::ptrdiff_t>(payload), reference.out.end()), 1,
                    "bytes past the outputs");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformanceAttendRecords, ::testing::ValuesIn(on_every_device(attend_cases())),
                         device_case_name<RecordCase>);

// ===========================================================================
// paged_decode_attention
// ===========================================================================

struct PagedAttentionCase {
  std::string name;
  PagedLayout layout = PagedLayout::Nhd;
  DType dtype = DType::F32;
  std::size_t head_dim = 64;
  std::size_t kv_heads = 2;
  std::size_t group = 1;  ///< query heads per kv head
  std::size_t page_size = 16;
  std::vector<std::size_t> lengths;  ///< tokens of each request (0: no pages)
  std::size_t query_pad = 0;         ///< elements between requests' queries past qo_heads * head_dim
  bool lse = true;
  std::size_t window = 0;  ///< a window layer's: the last `window` tokens (and the first `sinks`) attended
  std::size_t sinks = 0;

  /// The tokens request i attends, in PagedDecodeAttention's terms.
  AttendedTokens attended(std::size_t i) const {
    const std::size_t total = lengths[i];
    const std::size_t begin = window == 0 || total <= window ? 0 : total - window;
    const std::size_t sinks_end = std::min(sinks, begin);
    return {sinks_end, begin, sinks_end + total - begin};
  }

  std::size_t batch() const { return lengths.size(); }
  std::size_t qo_heads() const { return kv_heads * group; }
  std::size_t query_stride() const { return qo_heads() * head_dim + query_pad; }
  std::size_t pages_of(std::size_t i) const { return (lengths[i] + page_size - 1) / page_size; }
  std::size_t listed_pages() const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < batch(); ++i) n += pages_of(i);
    return n;
  }
  std::size_t num_pages() const { return listed_pages() + 3; }
  std::size_t page_elements() const { return 2 * page_size * kv_heads * head_dim; }
  /// Element 0 of the row of `head` of the key (kind 0) or value (1) at
  /// `offset` of `page`: NHD `[pages, 2, page_size, kv_heads, head_dim]`,
  /// HND `[pages, 2, kv_heads, page_size, head_dim]`.
  std::size_t row(std::size_t page, std::size_t kind, std::size_t offset, std::size_t head) const {
    const std::size_t plane = page * 2 + kind;
    return (layout == PagedLayout::Nhd ? (plane * page_size + offset) * kv_heads + head
                                       : (plane * kv_heads + head) * page_size + offset) *
           head_dim;
  }
};

/// The pool's elements as floats (already rounded to the dtype; NaN in every
/// slot no request holds or attends, so a read past a request's length or
/// outside its window shows), the queries, and FlashInfer's metadata over
/// shuffled page ids.
struct PagedAttentionData {
  std::vector<float> pages;
  std::vector<float> queries;
  std::vector<std::int32_t> kv_indptr;
  std::vector<std::int32_t> kv_indices;
  std::vector<std::int32_t> kv_last_page_len;
  float scale = 0.0f;
};

float rounded_to(float value, DType dtype) {
  return dtype == DType::F16    ? f16_to_f32(f32_to_f16(value))
         : dtype == DType::BF16 ? bf16_to_f32(f32_to_bf16(value))
                                : value;
}

PagedAttentionData paged_attention_data(const PagedAttentionCase& c) {
  const std::uint32_t seed = seed_of(c.name);
  PagedAttentionData data;
  data.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  data.pages.assign(c.num_pages() * c.page_elements(), kNaN);
  std::vector<std::int32_t> ids(c.num_pages());
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  Gaussian keys(seed + 1);
  const std::vector<float> values = mixed_values(c.page_elements(), seed + 2);
  data.kv_indptr.push_back(0);
  std::size_t next = 0, value = 0;
  for (std::size_t i = 0; i < c.batch(); ++i) {
    const AttendedTokens attended = c.attended(i);
    for (std::size_t t = 0; t < c.lengths[i]; ++t) {
      if (t % c.page_size == 0) data.kv_indices.push_back(ids[next++]);
      const auto page = static_cast<std::size_t>(data.kv_indices.back());
      const bool read = t < attended.sinks_end || t >= attended.window_begin;
      for (std::size_t h = 0; h < c.kv_heads; ++h) {
        const std::vector<float> key = keys.vector(c.head_dim);
        for (std::size_t d = 0; d < c.head_dim; ++d) {
          const float v = values[value++ % values.size()];
          data.pages[c.row(page, 0, t % c.page_size, h) + d] = read ? rounded_to(key[d], c.dtype) : kNaN;
          data.pages[c.row(page, 1, t % c.page_size, h) + d] = read ? rounded_to(v, c.dtype) : kNaN;
        }
      }
    }
    data.kv_indptr.push_back(static_cast<std::int32_t>(data.kv_indices.size()));
    const std::size_t last = c.lengths[i] == 0 ? 0 : c.lengths[i] - (c.pages_of(i) - 1) * c.page_size;
    data.kv_last_page_len.push_back(static_cast<std::int32_t>(last));
  }
  data.queries = Gaussian(seed + 3).vector(c.batch() * c.query_stride());
  for (float& q : data.queries) q = rounded_to(q, c.dtype);
  return data;
}

/// One request's outputs and log-sum-exps, or the bound on each.
struct AttentionOutputs {
  Bytes out;
  Bytes lse;
};

/// Plain loops in PagedDecodeAttention's order, on the dtype-rounded floats:
/// each dot as 32 lane sums (elements l, l + 32, ...) combined by the xor
/// butterfly, scaled; the max, the weights and their sum, and each output
/// element's weighted sum in token order; f32 throughout, no FMA.
AttentionOutputs reference_paged_attention(const PagedAttentionCase& c, const PagedAttentionData& data,
                                           const AttentionOutputs& start) {
  std::vector<float> out(c.batch() * c.qo_heads() * c.head_dim), lse(c.batch() * c.qo_heads());
  for (std::size_t i = 0; i < c.batch(); ++i) {
    const AttendedTokens attended = c.attended(i);
    const std::size_t tokens = attended.count;
    const auto slot = [&](std::size_t u, std::size_t kind, std::size_t head) {
      const std::size_t t = attended.token(u);
      const auto page =
          static_cast<std::size_t>(data.kv_indices[static_cast<std::size_t>(data.kv_indptr[i]) + t / c.page_size]);
      return data.pages.data() + c.row(page, kind, t % c.page_size, head);
    };
    for (std::size_t q = 0; q < c.qo_heads(); ++q) {
      const float* query = data.queries.data() + i * c.query_stride() + q * c.head_dim;
      const std::size_t head = q / c.group;
      std::vector<float> scores(tokens);
      float max = -kInf;
      for (std::size_t t = 0; t < tokens; ++t) {
        const float* key = slot(t, 0, head);
        float lanes[32] = {};
        for (std::size_t d = 0; d < c.head_dim; ++d) lanes[d % 32] = lanes[d % 32] + query[d] * key[d];
        for (std::size_t width = 16; width > 0; width /= 2) {
          for (std::size_t l = 0; l < width; ++l) lanes[l] = lanes[l] + lanes[l + width];
        }
        scores[t] = lanes[0] * data.scale;
        max = scores[t] > max ? scores[t] : max;
      }
      float sum = 0.0f;
      std::vector<float> acc(c.head_dim, 0.0f);
      for (std::size_t t = 0; t < tokens; ++t) {
        const float weight = std::exp(scores[t] - max);
        sum = sum + weight;
        const float* v = slot(t, 1, head);
        for (std::size_t d = 0; d < c.head_dim; ++d) acc[d] = acc[d] + weight * v[d];
      }
      for (std::size_t d = 0; d < c.head_dim; ++d) {
        out[(i * c.qo_heads() + q) * c.head_dim + d] = tokens == 0 ? 0.0f : acc[d] / sum;
      }
      lse[i * c.qo_heads() + q] = tokens == 0 ? -kInf : max + std::log(sum);
    }
  }
  return {overwritten(start.out, out), c.lse ? overwritten(start.lse, lse) : start.lse};
}

/// The bounds on |CUDA - CPU| (each evaluates the same order; only exp and
/// log round differently, an f32 exp being within 2 ulp on the device and 1
/// on the host: relative weight difference e <= 8u). Both outputs are an f32
/// evaluation of softmax(s) . v with their own weights: each within
/// (gamma_(T+1) + gamma_T + u) V of the exact ratio of its weights, V =
/// max_t |v_t,d| (a convex combination), and the two exact ratios within
/// 2e / (1 - e) V of each other. lse = m + log(S): the sums S within a factor
/// (1 + e)(1 + gamma_T)^2, log within an ulp each side (|log S| <= log T,
/// S in [1, T]), the final add an ulp of |lse| each side.
std::pair<std::vector<double>, std::vector<double>> paged_attention_bounds(const PagedAttentionCase& c,
                                                                           const PagedAttentionData& data,
                                                                           const Bytes& cpu_lse) {
  const double u = kUnitRoundoff;
  const double e = 8.0 * u;
  std::vector<double> out, lse;
  for (std::size_t i = 0; i < c.batch(); ++i) {
    const auto tokens = static_cast<double>(c.lengths[i]);
    for (std::size_t q = 0; q < c.qo_heads(); ++q) {
      for (std::size_t d = 0; d < c.head_dim; ++d) {
        double largest = 0.0;
        const AttendedTokens attended = c.attended(i);
        for (std::size_t k = 0; k < attended.count; ++k) {
          const std::size_t t = attended.token(k);
          const auto page =
              static_cast<std::size_t>(data.kv_indices[static_cast<std::size_t>(data.kv_indptr[i]) + t / c.page_size]);
          largest = std::max(largest, std::fabs(double{data.pages[c.row(page, 1, t % c.page_size, q / c.group) + d]}));
        }
        out.push_back(2.0 * (gamma(tokens + 1.0) + gamma(tokens) + u) * largest * 1.01 + 2.0 * e / (1.0 - e) * largest);
      }
      if (c.lse) {
        const double value =
            c.lengths[i] == 0 ? 0.0 : std::fabs(values_of<float>(cpu_lse, 1, 4 * (i * c.qo_heads() + q))[0]);
        lse.push_back(
            c.lengths[i] == 0 ? 0.0 : 1.01 * (e + 2.0 * gamma(tokens)) + 4.0 * u * std::log(tokens) + 4.0 * u * value);
      }
    }
  }
  return {out, lse};
}

AttentionOutputs run_paged_attention(Backend& backend, const PagedAttentionCase& c, const PagedAttentionData& data,
                                     const AttentionOutputs& start) {
  const DeviceBuffer pages(backend, elements_of(data.pages, c.dtype));
  const DeviceBuffer queries(backend, elements_of(data.queries, c.dtype));
  const DeviceBuffer indptr(backend, bytes_of(data.kv_indptr));
  const DeviceBuffer indices(backend, bytes_of(data.kv_indices));
  const DeviceBuffer last(backend, bytes_of(data.kv_last_page_len));
  const DeviceBuffer out(backend, start.out);
  const DeviceBuffer lse(backend, start.lse);
  PagedDecodeAttention a;
  a.pages = {.data = pages.at(),
             .dtype = c.dtype,
             .layout = c.layout,
             .num_pages = c.num_pages(),
             .page_size = c.page_size,
             .kv_heads = c.kv_heads,
             .head_dim = c.head_dim};
  a.queries = queries.at();
  a.query_stride = c.query_stride();
  a.batch = c.batch();
  a.qo_heads = c.qo_heads();
  a.kv_indptr = indptr.as<std::int32_t>();
  a.kv_indices = indices.as<std::int32_t>();
  a.kv_last_page_len = last.as<std::int32_t>();
  a.scale = data.scale;
  a.window = c.window;
  a.sinks = c.sinks;
  a.out = out.as<float>();
  a.lse = c.lse ? lse.as<float>() : nullptr;
  backend.paged_decode_attention(a, Stream{});
  return {out.read(), lse.read()};
}

std::vector<PagedAttentionCase> paged_attention_cases() {
  using D = DType;
  using L = PagedLayout;
  const std::size_t chunk = kPagedAttentionChunkTokens;
  return {
      {.name = "nhd_f32_mid_page", .lengths = {37}},
      {.name = "hnd_f32_mid_page", .layout = L::Hnd, .lengths = {37}},
      {.name = "nhd_f32_page_boundary", .lengths = {48}},
      {.name = "hnd_bf16_page_boundary", .layout = L::Hnd, .dtype = D::BF16, .lengths = {32}},
      {.name = "nhd_f16_gqa_4", .dtype = D::F16, .group = 4, .lengths = {21, 16}},
      {.name = "hnd_bf16_gqa_4_head_dim_128",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .head_dim = 128,
       .group = 4,
       .lengths = {70, 3}},
      {.name = "nhd_bf16_head_dim_128", .dtype = D::BF16, .head_dim = 128, .kv_heads = 8, .lengths = {19}},
      {.name = "nhd_f32_head_dim_1", .head_dim = 1, .kv_heads = 3, .lengths = {9, 17}},
      {.name = "hnd_f16_head_dim_1_gqa_4",
       .layout = L::Hnd,
       .dtype = D::F16,
       .head_dim = 1,
       .group = 4,
       .lengths = {5}},
      {.name = "nhd_f32_head_dim_129", .head_dim = 129, .lengths = {33}},
      {.name = "hnd_bf16_head_dim_129_gqa_4",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .head_dim = 129,
       .kv_heads = 1,
       .group = 4,
       .lengths = {40}},
      {.name = "nhd_page_size_1", .page_size = 1, .lengths = {1, 7, 12}},
      {.name = "hnd_f16_page_size_1_gqa_4",
       .layout = L::Hnd,
       .dtype = D::F16,
       .group = 4,
       .page_size = 1,
       .lengths = {6, 1}},
      {.name = "nhd_one_token", .lengths = {1}},
      {.name = "nhd_window_8", .lengths = {37, 5, 8, 9}, .window = 8},
      {.name = "hnd_bf16_sinks_4_window_20_gqa_4",
       .layout = L::Hnd,
       .dtype = D::BF16,
       .group = 4,
       .lengths = {70, 22, 3},
       .window = 20,
       .sinks = 4},
      {.name = "nhd_window_1_sinks_past_the_window", .page_size = 4, .lengths = {1, 2, 30}, .window = 1, .sinks = 40},
      {.name = "nhd_window_across_chunks", .lengths = {2 * chunk + 50}, .window = chunk + 7, .sinks = 3},
      {.name = "nhd_empty_request", .lengths = {0}},
      {.name = "hnd_bf16_empty_request_between", .layout = L::Hnd, .dtype = D::BF16, .lengths = {5, 0, 16, 0}},
      {.name = "nhd_bf16_batch_of_lengths", .dtype = D::BF16, .group = 4, .lengths = {1, 15, 16, 17, 0, 64, 100}},
      {.name = "hnd_f32_batch_of_lengths", .layout = L::Hnd, .group = 2, .lengths = {31, 2, 48, 9}},
      {.name = "nhd_f32_chunk_boundaries", .kv_heads = 1, .lengths = {chunk, chunk + 1, 2 * chunk + 1}},
      {.name = "nhd_f16_padded_query_stride", .dtype = D::F16, .group = 4, .lengths = {20, 8}, .query_pad = 3},
      {.name = "nhd_without_lse", .lengths = {25, 0}, .lse = false},
      {.name = "nhd_no_requests", .lengths = {}},
  };
}

using BackendConformancePagedAttention = ConformanceTest<PagedAttentionCase>;

TEST_P(BackendConformancePagedAttention, AttendsEachRequestsPagesInTheSharedOrder) {
  const PagedAttentionCase& c = param();
  const PagedAttentionData data = paged_attention_data(c);
  const AttentionOutputs start{nan_bytes(4 * c.batch() * c.qo_heads() * c.head_dim, seed_of(c.name) + 4),
                               nan_bytes(4 * c.batch() * c.qo_heads(), seed_of(c.name) + 5)};
  const AttentionOutputs actual = run_paged_attention(backend(), c, data, start);
  if (on_reference_device()) {
    const AttentionOutputs expected = reference_paged_attention(c, data, start);
    for (const float v : values_of<float>(expected.out, c.batch() * c.qo_heads() * c.head_dim)) {
      ASSERT_TRUE(std::isfinite(v)) << "the reference read a slot no request holds";
    }
    expect_same_floats(actual.out, expected.out, c.batch() * c.qo_heads() * c.head_dim, "out");
    expect_same_floats(actual.lse, expected.lse, c.lse ? c.batch() * c.qo_heads() : 0, "lse");
    return;
  }
  AttentionOutputs expected = run_paged_attention(cpu_backend(), c, data, start);
  const auto [out_bounds, lse_bounds] = paged_attention_bounds(c, data, expected.lse);
  expect_floats_near(actual.out, expected.out, out_bounds, "out");
  // An empty request's -inf has no distance: its bits are compared, then set aside.
  Bytes lse = actual.lse;
  for (std::size_t k = 0; c.lse && k < c.batch() * c.qo_heads(); ++k) {
    if (c.lengths[k / c.qo_heads()] != 0) continue;
    EXPECT_EQ(values_of<float>(lse, 1, 4 * k)[0], -kInf) << "lse of empty request " << k / c.qo_heads();
    std::memcpy(lse.data() + 4 * k, expected.lse.data() + 4 * k, 4);
  }
  expect_floats_near(lse, expected.lse, lse_bounds, "lse");
}

INSTANTIATE_TEST_SUITE_P(, BackendConformancePagedAttention,
                         ::testing::ValuesIn(on_every_device(paged_attention_cases())),
                         device_case_name<PagedAttentionCase>);

// ===========================================================================
// The limits the tables are built on
// ===========================================================================

TEST(BackendConformanceLimits, StagingCasesSitOnTheCudaKernelsThresholds) {
  using detail::make_record_layout;
  EXPECT_EQ(make_record_layout(kStagingDim, kStagingBits, kStagedProjections).record_bytes, cuda::kStagedRecordBytes);
  EXPECT_GT(make_record_layout(kStagingDim, kStagingBits, kStagedProjections + 1).record_bytes,
            cuda::kStagedRecordBytes);
  EXPECT_LE(make_record_layout(kValueStagingDim, kStagedValueBits, 0).record_bytes, cuda::kAttendStagedRecordBytes);
  EXPECT_GT(make_record_layout(kValueStagingDim, kStagedValueBits + 1, 0).record_bytes, cuda::kAttendStagedRecordBytes);
  EXPECT_GT(make_record_layout(kGlobalEncodeDim, 4, 0).padded_dim, cuda::kEncodeSharedMaxP);
}

TEST(BackendConformanceLimits, LargestHeadDimIsTheLargestKvCacheConfigAccepts) {
  KvCacheConfig config{.head_dim = kLargestHeadDim, .bits = 4, .projections = 8};
  EXPECT_NO_THROW(config.validate());
  config.head_dim = kLargestHeadDim + 2;
  EXPECT_THROW(config.validate(), Error);
}

}  // namespace
}  // namespace micache::testing::conformance
