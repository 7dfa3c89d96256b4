#include "micache/full_activation_cache.hpp"

#include <fmt/format.h>

#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/core/checks.hpp"

namespace micache {

FullActivationCache FullActivationCache::with_capacity(std::size_t n_layers, Stream stream) {
  FullActivationCache cache(stream);
  cache.activations_.reserve(n_layers);
  return cache;
}

void FullActivationCache::push(Tensor tensor) {
  detail::require_defined(tensor, "activation");
  detail::require_rank(tensor, 2, "activation", "[seq_len, d_model]");
  detail::require_float_dtype(tensor.dtype(), "activation dtype");
  if (!activations_.empty()) {
    const Tensor& first = activations_.front();
    if (tensor.shape() != first.shape()) {
      throw Error(ErrorCode::Shape, fmt::format("layer {} activation {} differs from layer 0 {}", activations_.size(),
                                                tensor.shape().to_string(), first.shape().to_string()));
    }
    if (tensor.dtype() != first.dtype() || !(tensor.device() == first.device())) {
      throw Error(ErrorCode::Config, fmt::format("layer {} is {} on {}, layer 0 is {} on {}", activations_.size(),
                                                 dtype_name(tensor.dtype()), tensor.device().to_string(),
                                                 dtype_name(first.dtype()), first.device().to_string()));
    }
  }
  activations_.push_back(std::move(tensor));
}

const Tensor* FullActivationCache::get_layer(std::size_t layer) const noexcept {
  return layer < activations_.size() ? &activations_[layer] : nullptr;
}

Tensor FullActivationCache::get_position(std::size_t layer, std::size_t position) const {
  if (layer >= activations_.size()) {
    throw Error(ErrorCode::Hook, fmt::format("layer {} not in cache", layer));
  }
  const Tensor& tensor = activations_[layer];
  detail::require_index(position, tensor.dim(0), "position", "seq_len");
  return tensor.select(position);
}

Tensor FullActivationCache::stack_position(std::size_t position) const {
  const std::size_t length = seq_len();
  detail::require_index(position, length, "position", "seq_len");
  const Tensor& first = activations_.front();
  const std::size_t d_model = first.dim(1);
  const std::size_t row_bytes = d_model * dtype_size(first.dtype());
  Tensor out = Tensor::empty({activations_.size(), d_model}, first.dtype(), first.device(), stream_);
  Backend& backend = backend_for(first.device());
  auto* dst = static_cast<std::byte*>(out.mutable_data());
  for (std::size_t layer = 0; layer < activations_.size(); ++layer) {
    const auto* src = static_cast<const std::byte*>(activations_[layer].data()) + position * row_bytes;
    backend.copy_device_to_device(dst + layer * row_bytes, src, row_bytes, stream_);
  }
  return out;
}

std::size_t FullActivationCache::seq_len() const {
  if (activations_.empty()) {
    throw Error(ErrorCode::Hook, "cache is empty");
  }
  return activations_.front().dim(0);
}

}  // namespace micache
