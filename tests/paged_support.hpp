// The small paged pool every PagedKvCache test file uses: 2 layers of 2 heads x 4, and a fixture
// (one backend per parameter) that adds sequences, runs steps, writes recognisable data and renders
// everything a caller can observe of a cache.
#pragma once

#include <cstdint>
#include <vector>

#include "test_support.hpp"

namespace micache::testing {

inline constexpr std::size_t kHeads = 2;
inline constexpr std::size_t kDim = 4;

inline PagedKvConfig small_config(std::size_t page_size, std::size_t num_pages, PagedLayout layout = PagedLayout::Nhd,
                                  DType dtype = DType::F32) {
  return PagedKvConfig{.n_layers = 2,
                       .kv_heads = kHeads,
                       .head_dim = kDim,
                       .page_size = page_size,
                       .num_pages = num_pages,
                       .dtype = dtype,
                       .layout = layout};
}

class PagedCacheFixture : public ::testing::TestWithParam<Device> {
 protected:
  PagedKvCache make(std::size_t page_size, std::size_t num_pages, PagedLayout layout = PagedLayout::Nhd,
                    DType dtype = DType::F32) const {
    return PagedKvCache(small_config(page_size, num_pages, layout, dtype), GetParam());
  }

  static PagedStepPlan step(PagedKvCache& cache, std::vector<SequenceId> ids, std::vector<std::size_t> counts) {
    return cache.begin_step(ids, counts);
  }

  // A new sequence holding `tokens` reserved slots.
  static SequenceId sequence(PagedKvCache& cache, std::size_t tokens) {
    const SequenceId id = cache.add_sequence();
    step(cache, {id}, {tokens});
    return id;
  }

  // `tokens` new tokens' keys or values, [tokens, kHeads, kDim], never zero.
  static std::vector<float> data(std::size_t tokens, std::uint32_t seed) {
    return random_values(tokens * kHeads * kDim, seed, 0.25f, 2.0f);
  }

  Tensor tensor(const std::vector<float>& values, DType dtype = DType::F32) const {
    return Tensor::from_host(values, {values.size() / (kHeads * kDim), kHeads, kDim}, dtype, GetParam());
  }

  // Dense [1, kHeads, len, kDim] from token rows of kHeads * kDim values.
  static std::vector<float> dense(const std::vector<std::vector<float>>& rows) {
    std::vector<float> out;
    for (std::size_t h = 0; h < kHeads; ++h) {
      for (const std::vector<float>& row : rows)
        out.insert(out.end(), row.begin() + h * kDim, row.begin() + (h + 1) * kDim);
    }
    return out;
  }

  // Writes `keys` (values: keys + 10) of the plan's tokens into every layer (layer l adds 100 * l).
  void write_all(PagedKvCache& cache, const PagedStepPlan& plan, const std::vector<float>& keys,
                 DType dtype = DType::F32) const {
    for (std::size_t l = 0; l < 2; ++l) {
      std::vector<float> k = keys, v = keys;
      for (std::size_t i = 0; i < k.size(); ++i) {
        k[i] += 100.0f * static_cast<float>(l);
        v[i] += 100.0f * static_cast<float>(l) + 10.0f;
      }
      cache.write(l, plan, tensor(k, dtype), tensor(v, dtype));
    }
  }

  // Everything a caller can observe of `cache` for sequences `ids`, as floats.
  static std::vector<float> state(const PagedKvCache& cache, const std::vector<SequenceId>& ids) {
    const PagedPoolStats s = cache.pool_stats();
    std::vector<float> out{static_cast<float>(cache.num_sequences()), static_cast<float>(s.pages_used),
                           static_cast<float>(s.pages_shared), static_cast<float>(s.tokens)};
    for (const SequenceId id : ids) {
      out.push_back(static_cast<float>(cache.length(id)));
      for (const std::int32_t p : cache.pages_of(id)) out.push_back(static_cast<float>(p));
      for (const std::size_t p : cache.positions(id)) out.push_back(static_cast<float>(p));
      for (std::size_t l = 0; l < 2; ++l) {
        const PagedKv kv = cache.gather(id, l);
        for (const Tensor& t : {kv.keys, kv.values}) {
          const std::vector<float> values = t.to_host_f32();
          out.insert(out.end(), values.begin(), values.end());
        }
      }
    }
    return out;
  }
};

}  // namespace micache::testing
