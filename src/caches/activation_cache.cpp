#include "micache/activation_cache.hpp"

#include "src/core/checks.hpp"

namespace micache {

ActivationCache ActivationCache::new_cache(std::vector<Tensor> activations) {
  for (const Tensor& tensor : activations) {
    detail::require_defined(tensor, "activation");
  }
  ActivationCache cache;
  cache.activations_ = std::move(activations);
  return cache;
}

ActivationCache ActivationCache::with_capacity(std::size_t n_layers) {
  ActivationCache cache;
  cache.activations_.reserve(n_layers);
  return cache;
}

void ActivationCache::push(Tensor tensor) {
  detail::require_defined(tensor, "activation");
  activations_.push_back(std::move(tensor));
}

const Tensor* ActivationCache::get_layer(std::size_t layer) const noexcept {
  return layer < activations_.size() ? &activations_[layer] : nullptr;
}

std::vector<std::vector<float>> ActivationCache::to_f32_vecs() const {
  std::vector<std::vector<float>> result;
  result.reserve(activations_.size());
  for (const Tensor& tensor : activations_) {
    result.push_back(tensor.to_host_f32());
  }
  return result;
}

}  // namespace micache
