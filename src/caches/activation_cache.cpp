#include "micache/activation_cache.hpp"

#include "micache/error.hpp"

namespace micache {
namespace {

void require_defined(const Tensor& tensor) {
  if (!tensor.defined()) {
    throw Error(ErrorCode::Config, "activation cache: undefined tensor");
  }
}

}  // namespace

ActivationCache ActivationCache::new_cache(std::vector<Tensor> activations) {
  for (const Tensor& tensor : activations) {
    require_defined(tensor);
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
  require_defined(tensor);
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
