// Built against an installed micache through find_package: checks the public
// headers compile with plain g++ and that a query gives candle-mi's answer.
#include <micache/micache.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  std::vector<float> pattern(2 * 4 * 4, 0.25f);
  for (int q = 0; q < 4; ++q) {
    for (int k = 0; k < 4; ++k) pattern[16 + q * 4 + k] = q == k ? 0.7f : 0.1f;
  }
  auto cache = micache::AttentionCache::with_capacity(1);
  cache.push(micache::Tensor::from_host(pattern, {1, 2, 4, 4}, micache::DType::F32, micache::Device::best()));
  const std::vector<float> row = cache.attention_from_position(0, 0);
  std::printf("consumer: attention_from_position(0, 0)[0] = %.3f on %s\n", row[0],
              micache::Device::best().to_string().c_str());
  return std::fabs(row[0] - 0.475f) < 1e-6f ? 0 : 1;
}
