// Out-of-memory at every allocation: each mutating operation of every cache
// runs with the backend failing its 1st, 2nd, ... allocation until the
// operation needs no more. Every failure must throw OutOfMemory, leave the
// cache equal to its prior state, and leak nothing (the backend's bytes in
// use return to their prior value); queries must leak nothing either.
#include "fault_sweep.hpp"
#include "test_support.hpp"

namespace micache::testing {
namespace {

class FaultInjection : public ::testing::TestWithParam<Device> {
 protected:
  Tensor tokens(std::size_t count, float base) const {
    return Tensor::from_host(random_values(2 * count * 8, static_cast<std::uint32_t>(base * 7), base, base + 1.0f),
                             {1, 2, count, 8}, DType::BF16, GetParam());
  }

  // Three layers holding 16 tokens in a full ring, after a trim and a wrap: start != 0.
  KVCache kv_cache() const {
    KVCache cache(3);
    for (std::size_t l = 0; l < 3; ++l) cache.append(l, tokens(16, 1.0f), tokens(16, 2.0f));
    cache.trim_to(10);
    for (std::size_t l = 0; l < 3; ++l) cache.append(l, tokens(6, 3.0f), tokens(6, 4.0f));
    return cache;
  }

  static std::vector<float> kv_state(const KVCache& cache) {
    std::vector<float> out{static_cast<float>(cache.seq_len()), static_cast<float>(cache.capacity()),
                           static_cast<float>(cache.memory_reserved())};
    for (std::size_t l = 0; l < cache.n_layers(); ++l) {
      for (const Tensor& t : {cache.keys(l), cache.values(l)}) {
        const std::vector<float> values = t.to_host_f32();
        out.insert(out.end(), values.begin(), values.end());
      }
      for (std::size_t p : cache.positions(l)) out.push_back(static_cast<float>(p));
    }
    return out;
  }

  CompressedHeads compressed() const {
    CompressedHeads heads(2, {.head_dim = 16, .bits = 4, .projections = 8, .seed = 3}, GetParam());
    heads.push(Tensor::from_host(random_values(2 * 16 * 16, 1, -1.0f, 1.0f), {2, 16, 16}, DType::F32, GetParam()),
               Tensor::from_host(random_values(2 * 16 * 16, 2, -1.0f, 1.0f), {2, 16, 16}, DType::F32, GetParam()));
    return heads;
  }

  static std::vector<float> compressed_state(const CompressedHeads& heads) {
    std::vector<float> out{static_cast<float>(heads.len()), static_cast<float>(heads.memory_reserved())};
    for (const Tensor& t : {heads.decode_keys(), heads.decode_values()}) {
      const std::vector<float> values = t.to_host_f32();
      out.insert(out.end(), values.begin(), values.end());
    }
    return out;
  }

  std::size_t sweep_kv(const std::function<void(KVCache&)>& operation) const {
    return sweep<KVCache>(
        GetParam(), [this] { return kv_cache(); }, operation, kv_state);
  }

  std::size_t sweep_compressed(const std::function<void(CompressedHeads&)>& operation) const {
    return sweep<CompressedHeads>(
        GetParam(), [this] { return compressed(); }, operation, compressed_state);
  }
};

TEST_P(FaultInjection, KVCacheAppendThatGrows) {
  const Tensor k = tokens(1, 5.0f), v = tokens(1, 6.0f);
  EXPECT_GE(sweep_kv([&](KVCache& c) { c.append(0, k, v); }), 2u);  // new key and value rings
}

TEST_P(FaultInjection, KVCacheSetLayer) {
  const Tensor k = tokens(4, 5.0f), v = tokens(4, 6.0f);
  EXPECT_GE(sweep_kv([&](KVCache& c) { c.set_layer(1, k, v); }), 2u);
}

TEST_P(FaultInjection, KVCacheReserveAndShrink) {
  EXPECT_GE(sweep_kv([](KVCache& c) { c.reserve(64); }), 6u);  // two rings per layer
  const auto trimmed = [this] {
    KVCache cache = kv_cache();
    cache.trim_to(5);
    return cache;
  };
  EXPECT_GE(sweep<KVCache>(
                GetParam(), trimmed, [](KVCache& c) { c.shrink_to_fit(); }, kv_state),
            6u);
}

TEST_P(FaultInjection, KVCacheEvictions) {
  EXPECT_GE(sweep_kv([](KVCache& c) { c.evict_to_window(2, 3); }), 6u);
  const Tensor scores = Tensor::from_host(random_values(16, 9), {16}, DType::F32, GetParam());
  EXPECT_GE(sweep_kv([&](KVCache& c) { c.evict_heavy_hitters(scores, 4, 4); }), 11u);
}

TEST_P(FaultInjection, CompressedPushes) {
  const Tensor k = Tensor::from_host(random_values(2 * 16, 3, -1.0f, 1.0f), {2, 16}, DType::F32, GetParam());
  const Tensor v = Tensor::from_host(random_values(2 * 16, 4, -1.0f, 1.0f), {2, 16}, DType::F32, GetParam());
  EXPECT_GE(sweep_compressed([&](CompressedHeads& h) { h.push(k, v); }), 2u);  // ring growth at 16 -> 32
  const std::vector<std::vector<float>> host(2, std::vector<float>(16, 0.25f));
  const auto multi_head = [this] {  // the same store behind bitpolar's host-vector API
    MultiHeadKvCache cache(2, {.head_dim = 16, .bits = 4, .projections = 8, .seed = 3}, GetParam());
    cache.heads() = compressed();
    return cache;
  };
  EXPECT_GE(sweep<MultiHeadKvCache>(
                GetParam(), multi_head, [&](MultiHeadKvCache& c) { c.push_token(host, host); },
                [](const MultiHeadKvCache& c) { return compressed_state(c.heads()); }),
            4u);
  EXPECT_GE(sweep_compressed([](CompressedHeads& h) { h.reserve(100); }), 2u);
}

TEST_P(FaultInjection, QueriesLeakNothing) {
  AttentionCache attention;
  attention.push(Tensor::from_host(random_softmax_rows(2 * 40, 40, 3), {1, 2, 40, 40}, DType::F32, GetParam()));
  const auto none = [](const AttentionCache&) { return std::vector<float>{}; };
  const auto make = [&] { return attention; };
  EXPECT_GE(sweep<AttentionCache>(
                GetParam(), make, [](AttentionCache& a) { (void)a.top_attended_all(0, 40); }, none),
            2u);
  EXPECT_GE(sweep<AttentionCache>(
                GetParam(), make, [](AttentionCache& a) { (void)a.attention_received(0); }, none),
            1u);
  const Tensor queries = Tensor::from_host(random_values(2 * 16, 5, -1.0f, 1.0f), {2, 16}, DType::F32, GetParam());
  const auto no_state = [](const CompressedHeads&) { return std::vector<float>{}; };
  EXPECT_GE(
      sweep<CompressedHeads>(
          GetParam(), [&] { return compressed(); }, [&](CompressedHeads& h) { (void)h.attention_output(queries); }, no_state),
      1u);
}

// A real out-of-memory, no injection: 2^44 tokens of 32 bytes per layer ring
// (512 TiB) is beyond any device's and the host's address space.
TEST_P(FaultInjection, ReservingBeyondTheDevicesMemoryFailsCleanlyAndTheCacheStaysUsable) {
  KVCache cache = kv_cache();
  const std::vector<float> before = kv_state(cache);
  const std::size_t in_use = backend_for(GetParam()).memory_stats().in_use;
  try {
    cache.reserve(std::size_t{1} << 44);
    FAIL() << "reserved 512 TiB";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::OutOfMemory) << e.what();
  }
  EXPECT_EQ(kv_state(cache), before);
  EXPECT_EQ(backend_for(GetParam()).memory_stats().in_use, in_use);
  cache.append(0, tokens(1, 7.0f), tokens(1, 8.0f));
  EXPECT_EQ(cache.positions(0).back(), 22u);

  CompressedHeads heads = compressed();
  const std::vector<float> heads_before = compressed_state(heads);
  EXPECT_THROW(heads.reserve(std::size_t{1} << 44), Error);
  EXPECT_EQ(compressed_state(heads), heads_before);
}

INSTANTIATE_TEST_SUITE_P(Backends, FaultInjection, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
