// Fuzz target: AttentionCache pushes and queries on small random patterns, against a straightforward reference.
//
// Patterns are [batch 1..2, heads 1..4, seq_q 1..8, seq_k 1..8] in F32, F16 or BF16 with values drawn to give ties,
// signed zeros, NaN, infinities, subnormals and arbitrary bits; the reference holds each value as stored (rounded
// to the dtype). Pushes of a wrong rank, a zero dimension, another shape (Shape), an I32 or undefined tensor
// (Config) must throw and leave the layer count as it was.
//
// Queries: attention_from_position, attention_to_position, top_attended_positions, top_attended_tensor, head_mean,
// attention_received and top_attended_all, with arbitrary layer, position, k and HeadSelection (batch, heads listed
// in any order, repeated or out of range). Layer, position, batch or head out of range must throw Hook, a repeated
// head Config, k = 0 in a tensor form Config (one of them when several are wrong). Otherwise:
// - a head mean is the f32 sum of the selected heads in ascending order divided by their count, bit for bit (NaN:
//   any NaN);
// - attention_received sums those means over rows, in chunks of kColumnSumChunkRows rows, bit for bit;
// - top-k gives min(k, seq_k) keys ordered by weight descending, ties to the lower index, NaN after every number,
//   each with its head mean as weight (-0 and +0 equal).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "fuzz/fuzz_support.hpp"
#include "micache/micache.hpp"

namespace micache::fuzz {
namespace {

constexpr std::size_t kMaxQueries = 32;

struct Dims {
  std::size_t batch, heads, seq_q, seq_k;
};

// The reference: every layer's values as stored, row-major [batch, heads, seq_q, seq_k].
struct Reference {
  Dims dims;
  std::vector<std::vector<float>> layers;

  float at(std::size_t layer, std::size_t b, std::size_t h, std::size_t q, std::size_t k) const {
    return layers[layer][((b * dims.heads + h) * dims.seq_q + q) * dims.seq_k + k];
  }
  // Mean over `heads` (ascending) of batch `b` at (q, k).
  float mean(std::size_t layer, std::size_t b, const std::vector<std::size_t>& heads, std::size_t q,
             std::size_t k) const {
    float sum = 0.0f;
    for (const std::size_t h : heads) sum += at(layer, b, h, q, k);
    return sum / static_cast<float>(heads.size());
  }
};

float pick_value(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 15)) {
    case 10:
      return -0.0f;
    case 11:
      return std::numeric_limits<float>::quiet_NaN();
    case 12:
      return std::numeric_limits<float>::infinity();
    case 13:
      return -std::numeric_limits<float>::infinity();
    case 14:
      return 1e-41f;
    case 15:
      return bits_float(in.ConsumeIntegral<std::uint32_t>());
    default:
      return static_cast<float>(in.ConsumeIntegralInRange(0, 4)) * 0.125f;  // few distinct values: ties
  }
}

// Pushes that must fail: each throws and leaves the layer count as it was.
void check_bad_push(FuzzedDataProvider& in, AttentionCache& cache, const Dims& d, DType dtype) {
  const std::size_t before = cache.n_layers();
  std::optional<Error> got;
  Codes expected;
  switch (in.ConsumeIntegralInRange(0, before == 0 ? 3 : 4)) {  // 4, another shape, needs a layer to differ from
    case 0:
      got = attempt("push", [&] {
        cache.push(Tensor::from_host(std::vector<float>(d.seq_q * d.seq_k), {d.seq_q, d.seq_k}, dtype));
      });
      expected = {ErrorCode::Shape};
      break;
    case 1:
      got = attempt("push", [&] { cache.push(Tensor::empty({d.batch, d.heads, 0, d.seq_k}, dtype)); });
      expected = {ErrorCode::Shape};
      break;
    case 2:
      got = attempt("push", [&] { cache.push(Tensor::empty({d.batch, d.heads, d.seq_q, d.seq_k}, DType::I32)); });
      expected = {ErrorCode::Config};
      break;
    case 3:
      got = attempt("push", [&] { cache.push(Tensor()); });
      expected = {ErrorCode::Config};
      break;
    default:
      got = attempt("push", [&] { cache.push(Tensor::empty({d.batch, d.heads, d.seq_q, d.seq_k + 1}, dtype)); });
      expected = {ErrorCode::Shape};
      break;
  }
  expect(got, expected, "push of a bad pattern");
  check(cache.n_layers() == before, "a failed push changed the layer count from {} to {}", before, cache.n_layers());
}

// A query's arguments and the codes they must give.
struct Query {
  std::size_t layer = 0;
  std::size_t position = 0;
  std::size_t k = 0;
  HeadSelection selection;
  std::vector<std::size_t> heads;  // the selected heads, ascending
  Codes expected;
};

// `position_bound`: seq_q or seq_k for the queries that take a position, 0 for those that do not.
Query pick_query(FuzzedDataProvider& in, const Reference& ref, std::size_t position_bound) {
  const Dims& d = ref.dims;
  Query query;
  query.layer = in.ConsumeIntegralInRange<std::size_t>(0, ref.layers.size());
  if (position_bound != 0) {
    query.position = in.ConsumeIntegralInRange<std::size_t>(0, position_bound);
    if (query.position >= position_bound) query.expected.add(ErrorCode::Hook);
  }
  query.k = in.ConsumeIntegralInRange(0, 15) == 15 ? std::numeric_limits<std::size_t>::max()
                                                   : in.ConsumeIntegralInRange<std::size_t>(0, d.seq_k + 2);
  query.selection.batch = in.ConsumeIntegralInRange<std::size_t>(0, d.batch);
  const std::size_t listed = in.ConsumeIntegralInRange<std::size_t>(0, d.heads + 1);
  for (std::size_t i = 0; i < listed; ++i)
    query.selection.heads.push_back(in.ConsumeIntegralInRange<std::size_t>(0, d.heads));

  if (query.layer >= ref.layers.size() || query.selection.batch >= d.batch) {
    query.expected.add(ErrorCode::Hook);
  }
  query.heads = query.selection.heads;
  std::sort(query.heads.begin(), query.heads.end());
  if (query.heads.empty()) {
    for (std::size_t h = 0; h < d.heads; ++h) query.heads.push_back(h);
  }
  if (query.heads.back() >= d.heads) query.expected.add(ErrorCode::Hook);
  if (std::adjacent_find(query.heads.begin(), query.heads.end()) != query.heads.end()) {
    query.expected.add(ErrorCode::Config);
  }
  return query;
}

void check_means(const std::vector<float>& got, const std::vector<float>& expected, const char* what) {
  check(got.size() == expected.size(), "{}: {} values, expected {}", what, got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    check(same_float(got[i], expected[i]), "{}: value {} is {}, expected {}", what, i, got[i], expected[i]);
  }
}

// The `k` largest of `means` as (index, weight): weight descending, ties to the lower index, NaN last.
std::vector<std::pair<std::size_t, float>> reference_top_k(const std::vector<float>& means, std::size_t k) {
  std::vector<std::pair<std::size_t, float>> all;
  for (std::size_t i = 0; i < means.size(); ++i) all.emplace_back(i, means[i]);
  std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return !std::isnan(a.second) && (std::isnan(b.second) || a.second > b.second);
  });
  all.resize(std::min(k, all.size()));
  return all;
}

void check_top_k(const std::vector<std::pair<std::size_t, float>>& got,
                 const std::vector<std::pair<std::size_t, float>>& expected, const char* what) {
  check(got.size() == expected.size(), "{}: {} entries, expected {}", what, got.size(), expected.size());
  for (std::size_t j = 0; j < got.size(); ++j) {
    const auto [index, weight] = got[j];
    check(index == expected[j].first &&
              (weight == expected[j].second || (std::isnan(weight) && std::isnan(expected[j].second))),
          "{}: entry {} is ({}, {}), expected ({}, {})", what, j, index, weight, expected[j].first, expected[j].second);
  }
}

// Rows of top-k tensors `[rows, k]` as (index, weight) lists.
std::vector<std::pair<std::size_t, float>> top_k_row(const TopK& top, std::size_t row) {
  const std::vector<std::int32_t> indices = top.indices.to_host_i32();
  const std::vector<float> weights = top.weights.to_host_f32();
  const std::size_t k = top.indices.dim(1);
  std::vector<std::pair<std::size_t, float>> out;
  for (std::size_t j = 0; j < k; ++j)
    out.emplace_back(static_cast<std::size_t>(indices[row * k + j]), weights[row * k + j]);
  return out;
}

void run_query(FuzzedDataProvider& in, const AttentionCache& cache, const Reference& ref) {
  const Dims& d = ref.dims;
  const int kind = in.ConsumeIntegralInRange(0, 6);
  Query q = pick_query(in, ref, kind == 1 ? d.seq_k : kind <= 3 ? d.seq_q : 0);
  const bool tensor_k = kind == 3 || kind == 6;
  if (tensor_k && q.k == 0) q.expected.add(ErrorCode::Config);
  const bool ok = q.expected.empty();

  // Reference head means of row `r` (all columns) and column `c` (all rows).
  const auto row = [&](std::size_t r) {
    std::vector<float> out;
    for (std::size_t c = 0; c < d.seq_k; ++c) out.push_back(ref.mean(q.layer, q.selection.batch, q.heads, r, c));
    return out;
  };
  switch (kind) {
    case 0: {
      std::vector<float> got;
      expect(attempt("attention_from_position",
                     [&] { got = cache.attention_from_position(q.layer, q.position, q.selection); }),
             q.expected, "attention_from_position");
      if (ok) check_means(got, row(q.position), "attention_from_position");
      break;
    }
    case 1: {
      std::vector<float> got;
      expect(attempt("attention_to_position",
                     [&] { got = cache.attention_to_position(q.layer, q.position, q.selection); }),
             q.expected, "attention_to_position");
      if (!ok) break;
      std::vector<float> column;
      for (std::size_t r = 0; r < d.seq_q; ++r)
        column.push_back(ref.mean(q.layer, q.selection.batch, q.heads, r, q.position));
      check_means(got, column, "attention_to_position");
      break;
    }
    case 2: {
      std::vector<std::pair<std::size_t, float>> got;
      expect(attempt("top_attended_positions",
                     [&] { got = cache.top_attended_positions(q.layer, q.position, q.k, q.selection); }),
             q.expected, "top_attended_positions");
      if (ok) check_top_k(got, reference_top_k(row(q.position), q.k), "top_attended_positions");
      break;
    }
    case 3: {
      TopK got;
      expect(attempt("top_attended_tensor",
                     [&] { got = cache.top_attended_tensor(q.layer, q.position, q.k, q.selection); }),
             q.expected, "top_attended_tensor");
      if (ok) check_top_k(top_k_row(got, 0), reference_top_k(row(q.position), q.k), "top_attended_tensor");
      break;
    }
    case 4: {
      Tensor got;
      expect(attempt("head_mean", [&] { got = cache.head_mean(q.layer, q.selection); }), q.expected, "head_mean");
      if (!ok) break;
      check(got.dims() == std::vector<std::size_t>{d.seq_q, d.seq_k}, "head_mean: shape {}", got.shape().to_string());
      std::vector<float> all;
      for (std::size_t r = 0; r < d.seq_q; ++r) {
        const std::vector<float> values = row(r);
        all.insert(all.end(), values.begin(), values.end());
      }
      check_means(got.to_host_f32(), all, "head_mean");
      break;
    }
    case 5: {
      Tensor got;
      expect(attempt("attention_received", [&] { got = cache.attention_received(q.layer, q.selection); }), q.expected,
             "attention_received");
      if (!ok) break;
      std::vector<float> sums(d.seq_k, 0.0f);
      std::vector<float> chunk(d.seq_k, 0.0f);
      for (std::size_t r = 0; r < d.seq_q; ++r) {
        const std::vector<float> values = row(r);
        for (std::size_t c = 0; c < d.seq_k; ++c) chunk[c] += values[c];
        if ((r + 1) % kColumnSumChunkRows == 0 || r + 1 == d.seq_q) {
          for (std::size_t c = 0; c < d.seq_k; ++c) sums[c] += chunk[c];
          std::fill(chunk.begin(), chunk.end(), 0.0f);
        }
      }
      check_means(got.to_host_f32(), sums, "attention_received");
      break;
    }
    default: {
      TopK got;
      expect(attempt("top_attended_all", [&] { got = cache.top_attended_all(q.layer, q.k, q.selection); }), q.expected,
             "top_attended_all");
      if (!ok) break;
      check(got.indices.dim(0) == d.seq_q, "top_attended_all: {} rows for seq_q {}", got.indices.dim(0), d.seq_q);
      for (std::size_t r = 0; r < d.seq_q; ++r)
        check_top_k(top_k_row(got, r), reference_top_k(row(r), q.k), "top_attended_all");
      break;
    }
  }
}

}  // namespace
}  // namespace micache::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace micache;
  using namespace micache::fuzz;
  FuzzedDataProvider in(data, size);
  const DType dtype = in.PickValueInArray({DType::F32, DType::F16, DType::BF16});
  Reference ref{.dims = {in.ConsumeIntegralInRange<std::size_t>(1, 2), in.ConsumeIntegralInRange<std::size_t>(1, 4),
                         in.ConsumeIntegralInRange<std::size_t>(1, 8), in.ConsumeIntegralInRange<std::size_t>(1, 8)}};
  const Dims& d = ref.dims;
  const std::size_t n_layers = in.ConsumeIntegralInRange<std::size_t>(1, 3);
  AttentionCache cache = AttentionCache::with_capacity(n_layers);
  for (std::size_t layer = 0; layer < n_layers; ++layer) {
    if (in.ConsumeIntegralInRange(0, 7) == 7) check_bad_push(in, cache, d, dtype);
    std::vector<float> values(d.batch * d.heads * d.seq_q * d.seq_k);
    for (float& v : values) v = stored_as(pick_value(in), dtype);
    expect(attempt("push",
                   [&] {
                     cache.push(Tensor::from_host(values, {d.batch, d.heads, d.seq_q, d.seq_k}, dtype));
                   }),
           {}, "push");
    ref.layers.push_back(std::move(values));
  }
  check(cache.n_layers() == n_layers, "{} layers after {} pushes", cache.n_layers(), n_layers);
  for (std::size_t i = 0; i < kMaxQueries && in.remaining_bytes() > 0; ++i) run_query(in, cache, ref);
  return 0;
}
