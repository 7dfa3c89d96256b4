// AttentionCache: per-layer post-softmax attention patterns with head-mean queries.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "micache/head_selection.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache {

/// Top-k result left on the device: `indices` I32 and `weights` F32, both
/// `[rows, k]`, row r sorted by weight descending (ties: lower index first;
/// NaN after every number).
struct TopK {
  Tensor indices;
  Tensor weights;
};

/// Per-layer attention patterns from a forward pass, each `[batch, heads, seq_q, seq_k]`,
/// with the queries interpretability work asks of them (candle-mi's AttentionCache).
///
/// Patterns stay where they were pushed (host or device, F32/F16/BF16); queries
/// run on that device's backend and read only what they need: a one-row query
/// reads `heads * seq_k` elements, never the whole pattern, and promotes each
/// element to f32 in registers. Head means sum the selected heads in ascending
/// index order in f32 and divide by their count, so the CPU and CUDA backends
/// agree bit for bit.
///
/// Queries run on the cache's stream (given at construction, null by default)
/// and allocate their results there; a pushed pattern must be ready in that
/// stream's order. Host results (`std::vector`) are copied back once, after
/// the stream's work.
///
/// Every layer must have the same `[batch, heads, seq_q, seq_k]` (checked by
/// `push`). Errors are `Error` with code Hook (layer, position, batch or head
/// out of range; messages as candle-mi: `position 10 out of range (seq_q=4)`),
/// Shape, Config or the backend's. A call that throws changes nothing.
///
/// Thread safety: const queries may run concurrently; `push` needs exclusive
/// access (like a standard container).
class AttentionCache {
 public:
  AttentionCache() = default;
  /// An empty cache whose queries run on `stream`.
  explicit AttentionCache(Stream stream) noexcept : stream_(stream) {}

  /// An empty cache with room for `n_layers` layers, its queries on `stream`.
  static AttentionCache with_capacity(std::size_t n_layers, Stream stream = {});

  /// Appends the next layer's pattern `[batch, heads, seq_q, seq_k]` (no copy).
  /// Errors: Shape when the rank is not 4, a dimension is 0, or the shape differs
  /// from the layers already held; Config when the dtype is not F32/F16/BF16.
  void push(Tensor pattern);

  std::size_t n_layers() const noexcept { return patterns_.size(); }
  bool is_empty() const noexcept { return patterns_.empty(); }
  /// The stream queries run on.
  Stream stream() const noexcept { return stream_; }

  /// The layer's pattern, or nullptr when `layer >= n_layers()`.
  const Tensor* get_layer(std::size_t layer) const noexcept;

  /// All patterns, layer order.
  const std::vector<Tensor>& patterns() const noexcept { return patterns_; }

  /// Writes every layer to the safetensors file `path`: tensor
  /// `blocks.{i}.attn.hook_pattern` (TransformerLens's name and layout, `[batch,
  /// heads, seq_q, seq_k]`, in the stored dtype), metadata `micache.cache` =
  /// `AttentionCache`. Layers on a device are copied to the host one by one.
  /// Error: Io (an earlier file at `path` is left as it was).
  void save(const std::string& path) const;

  /// Reads `blocks.0.attn.hook_pattern`, `blocks.1...`, up to the first missing
  /// index, from a file written by `save` or by Python (other tensors are
  /// ignored) onto `device`, allocated on `stream` (also the cache's stream).
  /// Errors: Io (malformed file, no layer, a file saved by another cache, a
  /// dtype other than F32/F16/BF16), and those of `push`.
  static AttentionCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

  /// How much query `position` attends to each key, averaged over heads: `[seq_k]`.
  /// Reads heads * seq_k elements. Errors: Hook for layer/position/batch/head.
  std::vector<float> attention_from_position(std::size_t layer, std::size_t position,
                                             const HeadSelection& selection = {}) const;

  /// How much each query attends to key `position`, averaged over heads: `[seq_q]`.
  /// Reads heads * seq_q elements (strided). Errors as above, bound `seq_k`.
  std::vector<float> attention_to_position(std::size_t layer, std::size_t position,
                                           const HeadSelection& selection = {}) const;

  /// The `k` keys `from_position` attends to most, as `(key, weight)` sorted by
  /// weight descending, ties by lower key, NaN last. `k > seq_k` returns all
  /// `seq_k`; `k = 0` returns none (after validating the other arguments).
  std::vector<std::pair<std::size_t, float>> top_attended_positions(
      std::size_t layer, std::size_t from_position, std::size_t k,
      const HeadSelection& selection = {}) const;

  /// Device form of `attention_from_position`: an F32 `[seq_k]` tensor on the layer's device.
  Tensor attention_from_position_tensor(std::size_t layer, std::size_t position,
                                        const HeadSelection& selection = {}) const;

  /// Device form of `attention_to_position`: an F32 `[seq_q]` tensor on the layer's device.
  Tensor attention_to_position_tensor(std::size_t layer, std::size_t position,
                                      const HeadSelection& selection = {}) const;

  /// Device form of `top_attended_positions`: `[1, min(k, seq_k)]` tensors.
  /// Error: Config when k = 0 (an empty tensor has no use here).
  TopK top_attended_tensor(std::size_t layer, std::size_t from_position, std::size_t k,
                           const HeadSelection& selection = {}) const;

  /// The whole head-mean pattern `[seq_q, seq_k]`, F32, on the layer's device.
  /// Reads heads * seq_q * seq_k elements once, writes seq_q * seq_k floats.
  Tensor head_mean(std::size_t layer, const HeadSelection& selection = {}) const;

  /// The attention each key position receives, summed over every query row
  /// of the head mean: `[seq_k]` F32 on the layer's device, `out[k] = sum_q
  /// mean_h pattern[batch, h, q, k]` (the accumulated attention H2O ranks
  /// tokens by; feed it to KVCache::evict_heavy_hitters). Summation order as
  /// Backend::head_mean_column_sums, so backends agree bit for bit. Reads
  /// heads * seq_q * seq_k elements once. Errors: Hook for layer/batch/head.
  Tensor attention_received(std::size_t layer, const HeadSelection& selection = {}) const;

  /// Top-k keys of every query row in one launch: `[seq_q, min(k, seq_k)]`
  /// indices and weights on the layer's device. The head mean is fused into
  /// the selection (never materialised) for small k (on CUDA, k <= 32: the
  /// warp path of cuda/top_k.cu).
  /// Error: Config when k = 0.
  TopK top_attended_all(std::size_t layer, std::size_t k, const HeadSelection& selection = {}) const;

 private:
  const Tensor& layer_or_throw(std::size_t layer) const;

  std::vector<Tensor> patterns_;
  Stream stream_;
};

}  // namespace micache
