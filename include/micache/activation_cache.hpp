// ActivationCache: one activation tensor per layer (typically the last token's residual).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "micache/tensor.hpp"

namespace micache {

/// One activation per layer, typically the residual stream at the last
/// position, `[d_model]` (candle-mi's ActivationCache). Tensors of any shape
/// and float dtype are accepted, as in candle-mi.
///
/// Thread safety: const queries may run concurrently; `push` needs exclusive access.
class ActivationCache {
 public:
  ActivationCache() = default;

  /// Wraps `activations` (no copy). Error: Config when one is undefined.
  static ActivationCache new_cache(std::vector<Tensor> activations);

  /// An empty cache with room for `n_layers` layers.
  static ActivationCache with_capacity(std::size_t n_layers);

  /// Appends the next layer. Error: Config when `tensor` is undefined.
  void push(Tensor tensor);

  /// The layer's tensor, or nullptr when `layer >= n_layers()`.
  const Tensor* get_layer(std::size_t layer) const noexcept;

  std::size_t n_layers() const noexcept { return activations_.size(); }
  bool is_empty() const noexcept { return activations_.empty(); }

  /// Writes every layer to the safetensors file `path`: tensor
  /// `blocks.{i}.hook_resid_post` (any shape, stored dtype), metadata `micache.cache` =
  /// `ActivationCache`. Error: Io (an earlier file at `path` is left as it was).
  void save(const std::string& path) const;

  /// Reads `blocks.0.hook_resid_post`, `blocks.1...`, up to the first missing
  /// index, from a file written by `save` or by Python, onto `device`,
  /// allocated on `stream`. Errors: Io (malformed file, no layer, a file saved
  /// by another cache), and those of `push`.
  static ActivationCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});
  const std::vector<Tensor>& activations() const noexcept { return activations_; }

  /// Every layer flattened and converted to f32 on the host: one copy per layer.
  std::vector<std::vector<float>> to_f32_vecs() const;

 private:
  std::vector<Tensor> activations_;
};

}  // namespace micache
