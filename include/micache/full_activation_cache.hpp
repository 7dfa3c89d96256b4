// FullActivationCache: every position's activation per layer.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "micache/tensor.hpp"

namespace micache {

/// The residual stream at every position, one `[seq_len, d_model]` tensor per
/// layer (candle-mi's FullActivationCache), for activation patching and
/// feature encoding. Unlike candle-mi, `push` checks that every layer has the
/// same shape, dtype and device, so `seq_len()` describes every layer.
///
/// `stack_position` runs on the cache's stream (given at construction, null by
/// default) and allocates its result there; pushed tensors must be ready in
/// that stream's order.
///
/// Errors: Hook (`layer 3 not in cache`, `position 10 out of range
/// (seq_len=10)`, `cache is empty`), Shape, Config. A call that throws changes nothing.
///
/// Thread safety: const queries may run concurrently; `push` needs exclusive access.
class FullActivationCache {
 public:
  FullActivationCache() = default;
  /// An empty cache whose device work runs on `stream`.
  explicit FullActivationCache(Stream stream) noexcept : stream_(stream) {}

  /// An empty cache with room for `n_layers` layers, its work on `stream`.
  static FullActivationCache with_capacity(std::size_t n_layers, Stream stream = {});

  /// Appends the next layer, `[seq_len, d_model]` (no copy).
  /// Errors: Shape when the rank is not 2 or the shape differs from layer 0's;
  /// Config when the dtype or device differs from layer 0's or is not a float type.
  void push(Tensor tensor);

  /// The layer's `[seq_len, d_model]` tensor, or nullptr when out of range.
  const Tensor* get_layer(std::size_t layer) const noexcept;

  /// Position `position` of `layer`, `[d_model]`: a view sharing the layer's
  /// storage, no copy. Errors: Hook for layer or position.
  Tensor get_position(std::size_t layer, std::size_t position) const;

  /// The same position of every layer, `[n_layers, d_model]`, gathered into a new
  /// tensor on the layers' device (one device-side copy per layer, no host
  /// round trip). Errors: Hook when empty or the position is out of range.
  Tensor stack_position(std::size_t position) const;

  std::size_t n_layers() const noexcept { return activations_.size(); }
  /// Positions per layer. Error: Hook `cache is empty`.
  std::size_t seq_len() const;
  bool is_empty() const noexcept { return activations_.empty(); }
  /// The stream device work runs on.
  Stream stream() const noexcept { return stream_; }

  /// Writes every layer to the safetensors file `path`: tensor
  /// `blocks.{i}.hook_resid_post` (`[seq_len, d_model]`, stored dtype), metadata `micache.cache` =
  /// `FullActivationCache`. Error: Io (an earlier file at `path` is left as it was).
  void save(const std::string& path) const;

  /// Reads `blocks.0.hook_resid_post`, `blocks.1...`, up to the first missing
  /// index, from a file written by `save` or by Python, onto `device`,
  /// allocated on `stream` (also the cache's stream). Errors: Io (malformed
  /// file, no layer, a file saved by another cache), and those of `push`.
  static FullActivationCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

 private:
  std::vector<Tensor> activations_;
  Stream stream_;
};

}  // namespace micache
