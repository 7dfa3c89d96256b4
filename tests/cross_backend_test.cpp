// CUDA against the CPU reference on fresh random data: head means equal bit
// for bit, top-k indices identical, compressed records identical. Skipped
// (with the reason) without a GPU.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "test_support.hpp"

namespace micache::testing {
namespace {

struct Case {
  DType dtype;
  std::size_t heads, seq_q, seq_k;

  friend void PrintTo(const Case& c, std::ostream* os) {
    *os << dtype_name(c.dtype) << " [2, " << c.heads << ", " << c.seq_q << ", " << c.seq_k << "]";
  }
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(dtype_name(c.dtype)) + "_h" + std::to_string(c.heads) + "_q" + std::to_string(c.seq_q) + "_k" +
         std::to_string(c.seq_k);
}

class CrossBackend : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    MICACHE_REQUIRE_CUDA();
    const Case& c = GetParam();
    std::vector<float> data =
        random_softmax_rows(2 * c.heads * c.seq_q, c.seq_k, 1234 + static_cast<std::uint32_t>(c.seq_k));
    if (data.size() > 10) {
      data[3] = std::numeric_limits<float>::quiet_NaN();  // NaN handling must agree too
    }
    const Tensor host = Tensor::from_host(data, {2, c.heads, c.seq_q, c.seq_k}, c.dtype);
    cpu_.push(host);
    cuda_.push(host.to(Device::cuda(0)));
  }

  AttentionCache cpu_;
  AttentionCache cuda_;
};

TEST_P(CrossBackend, RowQueriesAgreeBitForBit) {
  const Case& c = GetParam();
  for (std::size_t q : {std::size_t{0}, c.seq_q / 2, c.seq_q - 1}) {
    expect_same_bits(cuda_.attention_from_position(0, q), cpu_.attention_from_position(0, q));
    const HeadSelection odd_heads{.batch = 1, .heads = {c.heads - 1, 0}};
    expect_same_bits(cuda_.attention_from_position(0, q, odd_heads), cpu_.attention_from_position(0, q, odd_heads));
  }
}

TEST_P(CrossBackend, ColumnQueriesAgreeBitForBit) {
  const Case& c = GetParam();
  for (std::size_t k : {std::size_t{0}, c.seq_k / 3, c.seq_k - 1}) {
    expect_same_bits(cuda_.attention_to_position(0, k), cpu_.attention_to_position(0, k));
  }
}

TEST_P(CrossBackend, WholeHeadMeanAgreesBitForBit) {
  expect_same_bits(cuda_.head_mean(0).to_host_f32(), cpu_.head_mean(0).to_host_f32());
  const HeadSelection batch1{.batch = 1, .heads = {}};
  expect_same_bits(cuda_.head_mean(0, batch1).to_host_f32(), cpu_.head_mean(0, batch1).to_host_f32());
}

TEST_P(CrossBackend, TopKIndicesIdenticalForEveryK) {
  for (std::size_t k : {1u, 8u, 32u, 33u, 100u}) {
    const TopK gpu = cuda_.top_attended_all(0, k);
    const TopK cpu = cpu_.top_attended_all(0, k);
    ASSERT_EQ(gpu.indices.to_host_i32(), cpu.indices.to_host_i32()) << "k=" << k;
    expect_same_bits(gpu.weights.to_host_f32(), cpu.weights.to_host_f32());
  }
}

TEST_P(CrossBackend, AttentionReceivedAgreesBitForBit) {
  expect_same_bits(cuda_.attention_received(0).to_host_f32(), cpu_.attention_received(0).to_host_f32());
  const HeadSelection some_heads{.batch = 1, .heads = {0}};
  expect_same_bits(cuda_.attention_received(0, some_heads).to_host_f32(),
                   cpu_.attention_received(0, some_heads).to_host_f32());
}

TEST_P(CrossBackend, ConversionAgreesBitForBit) {
  const Tensor host = *cpu_.get_layer(0);
  for (DType target : {DType::F32, DType::F16, DType::BF16}) {
    expect_same_bits(host.to(Device::cuda(0)).to_dtype(target).to_host_f32(), host.to_dtype(target).to_host_f32());
  }
}

// Compressed caches: CUDA encodes the CPU's bytes (records equal byte for
// byte, so do the vectors decoded from them); scores and attention outputs
// agree to f32 rounding of sums of 128 terms in another order (relative 1e-5
// of the largest magnitude).
class CompressedCrossBackend : public ::testing::TestWithParam<ScoreEstimator> {
 protected:
  void SetUp() override { MICACHE_REQUIRE_CUDA(); }
};

// Expects two U8 `[heads, tokens, record_bytes]` record tensors to hold the
// same bytes, naming the head, token and byte of the first few that differ.
void expect_same_records(const Tensor& gpu, const Tensor& cpu) {
  ASSERT_EQ(gpu.shape(), cpu.shape());
  const std::vector<std::byte> actual = gpu.to_host_bytes();
  const std::vector<std::byte> expected = cpu.to_host_bytes();
  const std::size_t tokens = cpu.dim(1), record_bytes = cpu.dim(2);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (actual[i] != expected[i] && ++mismatches <= 5) {
      ADD_FAILURE() << "head " << i / (tokens * record_bytes) << ", token " << i / record_bytes % tokens << ", byte "
                    << i % record_bytes << ": " << std::to_integer<int>(actual[i])
                    << " != " << std::to_integer<int>(expected[i]);
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  ASSERT_EQ(gpu.size(), cpu.size());
  float scale = 0.0f;
  for (float v : cpu) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < cpu.size(); ++i) EXPECT_NEAR(gpu[i], cpu[i], 1e-5f * scale) << "element " << i;
}

TEST_P(CompressedCrossBackend, RecordsAreByteIdenticalAndScoresAgree) {
  const KvCacheConfig config{
      .head_dim = 96, .bits = 3, .projections = 24, .seed = 11, .value_bits = 5, .estimator = GetParam()};
  CompressedHeads cpu(4, config, Device::cpu());
  CompressedHeads gpu(4, config, Device::cuda(0));
  Gaussian gaussian(77);
  const std::vector<float> keys = gaussian.vector(4 * 300 * 96);
  const std::vector<float> values = gaussian.vector(4 * 300 * 96);
  const std::vector<float> queries = gaussian.vector(8 * 96);
  for (const Device device : {Device::cpu(), Device::cuda(0)}) {
    CompressedHeads& heads = device.is_cpu() ? cpu : gpu;
    heads.push(Tensor::from_host(keys, {4, 300, 96}, DType::BF16, device),
               Tensor::from_host(values, {4, 300, 96}, DType::BF16, device));
  }
  // Every byte: codes, norms and QJL signs (a sign bit or a norm's last bit
  // that differs may decode to the same vector, or not be decoded at all).
  const auto [gpu_keys, gpu_values] = gpu.records();
  const auto [cpu_keys, cpu_values] = cpu.records();
  expect_same_records(gpu_keys, cpu_keys);
  expect_same_records(gpu_values, cpu_values);
  expect_same_bits(gpu.decode_keys().to_host_f32(), cpu.decode_keys().to_host_f32());
  expect_same_bits(gpu.decode_values().to_host_f32(), cpu.decode_values().to_host_f32());
  const Tensor host_queries = Tensor::from_host(queries, {8, 96}, DType::F32);
  expect_close(gpu.scores(host_queries.to(Device::cuda(0)), 2).to_host_f32(),
               cpu.scores(host_queries, 2).to_host_f32());
  expect_close(gpu.attention_output(host_queries.to(Device::cuda(0)), 2).to_host_f32(),
               cpu.attention_output(host_queries, 2).to_host_f32());
}

// head_dim 4096 and 8192: records above the score kernel's staging size (a
// warp per token), work spaces past shared memory (global slices), and 600
// tokens, three attend chunks. Scores and outputs are sums of up to 8192
// products in another order: 1e-4 of the largest magnitude covers sqrt(n)
// rounding growth with room to spare.
TEST_P(CompressedCrossBackend, HeadDims4096And8192GiveTheCpusAnswers) {
  for (const std::size_t dim : {std::size_t{4096}, std::size_t{8192}}) {
    const KvCacheConfig config{.head_dim = dim, .bits = 4, .projections = 64, .seed = 5, .estimator = GetParam()};
    CompressedHeads cpu(2, config, Device::cpu());
    CompressedHeads gpu(2, config, Device::cuda(0));
    Gaussian gaussian(static_cast<std::uint32_t>(dim));
    const std::vector<float> keys = gaussian.vector(2 * 600 * dim);
    const std::vector<float> values = gaussian.vector(2 * 600 * dim);
    const std::vector<float> queries = gaussian.vector(4 * dim);
    for (const Device device : {Device::cpu(), Device::cuda(0)}) {
      CompressedHeads& heads = device.is_cpu() ? cpu : gpu;
      heads.push(Tensor::from_host(keys, {2, 600, dim}, DType::F32, device),
                 Tensor::from_host(values, {2, 600, dim}, DType::F32, device));
    }
    const auto [gpu_keys, gpu_values] = gpu.records();
    const auto [cpu_keys, cpu_values] = cpu.records();
    expect_same_records(gpu_keys, cpu_keys);
    expect_same_records(gpu_values, cpu_values);
    expect_same_bits(gpu.decode_values().to_host_f32(), cpu.decode_values().to_host_f32());
    const Tensor host_queries = Tensor::from_host(queries, {4, dim}, DType::F32);
    const std::vector<float> gpu_scores = gpu.scores(host_queries.to(Device::cuda(0)), 2).to_host_f32();
    const std::vector<float> cpu_scores = cpu.scores(host_queries, 2).to_host_f32();
    const std::vector<float> gpu_out = gpu.attention_output(host_queries.to(Device::cuda(0)), 2).to_host_f32();
    const std::vector<float> cpu_out = cpu.attention_output(host_queries, 2).to_host_f32();
    for (const auto& [actual, expected] : {std::pair{&gpu_scores, &cpu_scores}, std::pair{&gpu_out, &cpu_out}}) {
      ASSERT_EQ(actual->size(), expected->size());
      float scale = 0.0f;
      for (const float v : *expected) scale = std::max(scale, std::fabs(v));
      for (std::size_t i = 0; i < expected->size(); ++i) {
        ASSERT_NEAR((*actual)[i], (*expected)[i], 1e-4f * scale) << "head_dim " << dim << ", element " << i;
      }
    }
  }
}

std::string estimator_name(const ::testing::TestParamInfo<ScoreEstimator>& param) {
  return param.param == ScoreEstimator::Mse ? "mse" : "qjl";
}

INSTANTIATE_TEST_SUITE_P(Estimators, CompressedCrossBackend,
                         ::testing::Values(ScoreEstimator::Mse, ScoreEstimator::Qjl), estimator_name);

INSTANTIATE_TEST_SUITE_P(RandomPatterns, CrossBackend,
                         ::testing::Values(Case{DType::F32, 3, 1, 1}, Case{DType::F32, 4, 7, 7},
                                           Case{DType::BF16, 12, 7, 7}, Case{DType::F16, 5, 33, 1000},
                                           Case{DType::BF16, 32, 16, 1000}, Case{DType::F32, 6, 9, 4097},
                                           Case{DType::BF16, 8, 40, 4097}, Case{DType::F16, 2, 1000, 1000}),
                         case_name);

}  // namespace
}  // namespace micache::testing
