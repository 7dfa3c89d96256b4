// KVCache: per-layer keys and values in preallocated device ring buffers.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "micache/eviction.hpp"
#include "micache/position_runs.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache {

/// Keys and values of every layer, each `[batch, kv_heads, seq_len, head_dim]`,
/// the sequence axis being dim 2 (candle-mi's KVCache, made real).
///
/// Storage: each layer holds a key and a value buffer of `[batch, kv_heads,
/// capacity, head_dim]` on its device, used as a ring over the sequence axis.
/// `append` writes new tokens after the last one (one backend launch per
/// buffer, no host synchronisation) and grows capacity only when full (to
/// max(needed, 2 * capacity, 16) tokens, so appends are amortised O(1));
/// `trim_to` keeps the last N tokens by moving the ring's start (no byte is
/// moved); `shrink_to_fit` reallocates to exactly seq_len tokens and has the
/// backend return its unused memory to the system (Backend::release_unused_memory).
///
/// Layers: every populated layer has the same batch, kv_heads, head_dim, dtype
/// and device (checked; Shape or Config error). Layers may differ in length
/// while a step is filling them one by one; operations over all layers
/// (`trim_to`, `enforce_memory_limit`) require equal lengths and say so
/// otherwise. Every mutator validates first and allocates before changing
/// anything: a call that throws (OutOfMemory included) leaves the cache as it was.
///
/// Positions: trimming drops the oldest tokens; `first_position(layer)` is the
/// original position of the first kept token (0 until something is trimmed),
/// so a caller that stored keys after RoPE knows which rotation they carry.
///
/// Eviction: `trim_to`, `enforce_memory_limit`, `evict_to_window` and
/// `evict_heavy_hitters` each validate, ask their policy in eviction.hpp which
/// tokens to keep (KeptTokens) and compact every layer by one routine: a kept
/// suffix moves the ring's start; anything else is copied into new buffers of
/// the same capacity (sinks + window one launch per range, heavy hitters one
/// gather from an index list), and PositionRuns maps the positions.
///
/// Stream: every buffer and result is allocated, and every copy and kernel
/// runs, on the cache's stream (given at construction, null by default; it
/// must belong to the layers' device). Tensors passed in must be ready in that
/// stream's order and stay alive until it has read them (as with any CUDA
/// library call); with an OwnedStream and tensors from the default stream this
/// holds by itself. No call waits for the device but `evict_heavy_hitters`,
/// which reads the chosen indices back, `shrink_to_fit`, which waits for the
/// stream before returning memory to the system, and `save`.
///
/// Thread safety: const queries may run concurrently; mutation needs exclusive access.
class KVCache {
 public:
  /// `n_layers` empty layers whose work runs on `stream`.
  explicit KVCache(std::size_t n_layers = 0, Stream stream = {});
  static KVCache new_cache(std::size_t n_layers) { return KVCache(n_layers); }
  /// Move-only: a copy would share the storage that appends write in place,
  /// so two copies would overwrite each other's tokens. Move, or save and load.
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;
  KVCache(KVCache&&) noexcept = default;
  KVCache& operator=(KVCache&&) noexcept = default;

  std::size_t n_layers() const noexcept { return layers_.size(); }
  /// The stream the cache allocates and works on.
  Stream stream() const noexcept { return stream_; }
  /// Tokens in the first populated layer; 0 when no layer is populated.
  std::size_t seq_len() const noexcept;
  /// Tokens `layer` holds (0 when empty). Error: Hook for layer out of range.
  std::size_t seq_len(std::size_t layer) const;
  /// True when no layer holds keys.
  bool is_empty() const noexcept;
  /// Empties every layer and releases its storage; the layer count stays.
  void clear() noexcept;

  /// Replaces `layer` with copies of `keys` and `values` (both `[batch,
  /// kv_heads, seq_len, head_dim]`, same shape). Errors: Hook (layer out of
  /// range: `layer 10 out of range (layers=4)`), Shape, Config.
  void set_layer(std::size_t layer, const Tensor& keys, const Tensor& values);

  /// Appends `new_keys` and `new_values` (`[batch, kv_heads, n_new, head_dim]`)
  /// after the layer's last token; an empty layer adopts their geometry.
  /// n_new = 0 checks the arguments and changes nothing else (an empty layer
  /// still adopts the geometry, as `set_layer` with no tokens does).
  /// Errors: Hook, Shape (other batch/heads/head_dim or K != V), Config (dtype,
  /// device), OutOfMemory (growth failed; unchanged).
  void append(std::size_t layer, const Tensor& new_keys, const Tensor& new_values);

  /// Makes room for `tokens` tokens in every populated layer without further
  /// growth. Never shrinks. Error: OutOfMemory (unchanged).
  void reserve(std::size_t tokens);

  /// The layer's keys / values as a dense `[batch, kv_heads, seq_len, head_dim]`
  /// tensor, or an undefined Tensor when the layer is empty. When the ring is
  /// dense (start 0, capacity == seq_len) this shares the cache's storage (a
  /// later append, trim or clear may change it); otherwise it is a new tensor
  /// gathered in one launch.
  Tensor keys(std::size_t layer) const;
  Tensor values(std::size_t layer) const;

  /// Bytes of the stored keys and values: elements x dtype size over every
  /// populated layer (candle-mi's definition; excludes spare capacity).
  std::size_t memory_usage() const noexcept;
  /// Bytes held, spare capacity included (what the backend has allocated for this cache).
  std::size_t memory_reserved() const noexcept;
  /// Token slots per layer buffer (the largest over layers).
  std::size_t capacity() const noexcept;

  /// Keeps the last `max_seq_len` tokens of every layer, keys and values
  /// (eviction::last). False when seq_len() <= max_seq_len (nothing to trim).
  /// Moves no bytes.
  /// Error: Shape when populated layers differ in length (unchanged).
  bool trim_to(std::size_t max_seq_len);

  /// When memory_usage() > max_bytes, trims by `policy` (eviction::for_budget)
  /// and returns true; false when under budget or when ThreeQuarters would trim
  /// to 0 tokens. Moves no bytes. Error: Shape for unequal layer lengths.
  bool enforce_memory_limit(std::size_t max_bytes, EvictionPolicy policy = EvictionPolicy::ThreeQuarters);

  /// StreamingLLM-style eviction: keeps the first `sinks` and the last `window`
  /// tokens of every layer (keys and values; eviction::sinks_and_window) and
  /// drops the rest, in one compaction pass that moves each kept byte once
  /// (into new buffers of the same capacity, so the cache stays fully usable
  /// if allocation fails: it is then unchanged; with no sinks the kept tokens
  /// are a suffix and, as for trim_to, no byte moves). False when seq_len() <=
  /// sinks + window.
  /// Positions: kept keys keep the rotation they were stored with (keys stored
  /// after RoPE are not re-rotated); `positions(layer)` tells each kept token's
  /// original position so the caller can build the right mask or re-rotate.
  /// Errors: Shape for unequal layer lengths; OutOfMemory (unchanged).
  bool evict_to_window(std::size_t sinks, std::size_t window);

  /// Heavy-hitter eviction (H2O): keeps the last `window` tokens of every
  /// layer and, among the older ones, the `heavy` with the largest `scores`,
  /// in their original order (eviction::heavy_hitters); drops the rest in one
  /// gather launch per layer (keys and values together) into new buffers of
  /// the same capacity (none when the kept tokens are a suffix: the ring's
  /// start moves, as for trim_to).
  ///
  /// `scores` ranks the kept tokens in cache order (entry t belongs to
  /// `positions(layer)[t]`): F32, F16 or BF16 on the cache's device, either
  /// `[seq_len]` (one ranking for every layer) or `[n_layers, seq_len]` (one
  /// per layer; rows of empty layers are ignored). Typically the caller's
  /// running sum of AttentionCache::attention_received. Ties keep the older
  /// token; NaN ranks below every number. The ranking runs on the device
  /// (Backend::top_k_head_mean over the candidates); only the `heavy` chosen
  /// indices per layer come back to the host, to update `positions`.
  /// Positions: as for evict_to_window, kept keys keep their rotation.
  ///
  /// False when seq_len() <= heavy + window (nothing to evict). Errors: Shape
  /// (scores shape, unequal layer lengths), Config (scores dtype or device),
  /// OutOfMemory; on any error the cache is unchanged.
  bool evict_heavy_hitters(const Tensor& scores, std::size_t heavy, std::size_t window);

  /// Reallocates every layer to exactly seq_len tokens (0 frees the buffers),
  /// then synchronises the cache's stream and returns the backend's unused
  /// memory to the system (Backend::release_unused_memory): the bytes freed
  /// leave `memory_stats().reserved` too, not only `in_use`, unless another
  /// handle still shares a freed buffer. Complexity: one copy of the kept
  /// tokens per reallocated layer, and the wait. Errors: OutOfMemory
  /// (unchanged); Backend when the device fails while returning memory (the
  /// layers are then already reallocated, their tokens and positions intact).
  void shrink_to_fit();

  /// Original position (count of tokens appended or set before it) of the
  /// layer's first kept token (the next position when the layer holds none).
  /// Error: Hook for layer out of range.
  std::size_t first_position(std::size_t layer) const;

  /// Original position of every kept token of `layer`, oldest first.
  /// Error: Hook for layer out of range.
  std::vector<std::size_t> positions(std::size_t layer) const;

  /// The position the next token appended to `layer` gets (the count of
  /// tokens ever appended or set there). Error: Hook for layer out of range.
  std::size_t next_position(std::size_t layer) const;

  /// The restore hook of a loader: gives populated `layer` the original
  /// `positions` of its tokens (one per token, strictly increasing, all below
  /// `next_position`), as a saved file holds them. Errors: Hook (layer out of
  /// range), Shape (count, order or bound wrong; unchanged).
  void restore_positions(std::size_t layer, const std::vector<std::size_t>& positions, std::size_t next_position);

  /// Writes the cache to the safetensors file `path`. Per populated layer i:
  /// `blocks.{i}.attn.k_cache` and `blocks.{i}.attn.v_cache` (the dense `[batch,
  /// kv_heads, seq_len, head_dim]` keys and values in the stored dtype; the
  /// layout of Hugging Face's past_key_values) and `blocks.{i}.attn.positions`
  /// (I64 `[seq_len]`, `positions(i)`). Metadata: `micache.cache` = `KVCache`,
  /// `micache.n_layers`, `micache.next_positions` (a JSON array, the position
  /// the next appended token of each layer gets). Spare capacity is not
  /// written. Error: Io (an earlier file at `path` is left as it was).
  void save(const std::string& path) const;

  /// Reads a file written by `save`, or by Python with at least
  /// `blocks.{i}.attn.k_cache` and `v_cache` for i = 0, 1, ... (positions then
  /// default to 0..seq_len-1), onto `device` in a cache working on `stream`;
  /// capacity is exactly seq_len. Errors: Io (malformed file, positions not
  /// increasing or not matching seq_len, a file saved by another cache), and
  /// those of `set_layer`.
  static KVCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

 private:
  struct Layer {
    Tensor keys;    // [batch, kv_heads, capacity, head_dim] ring buffer, undefined when empty
    Tensor values;  // same shape as keys
    std::size_t start = 0;
    std::size_t length = 0;
    PositionRuns positions;         // original positions of the `length` kept tokens
    std::size_t next_position = 0;  // position the next appended token gets

    bool populated() const noexcept { return keys.defined(); }
    std::size_t capacity() const noexcept { return populated() ? keys.dim(2) : 0; }
  };

  Layer& layer_or_throw(std::size_t layer);
  const Layer& layer_or_throw(std::size_t layer) const;
  const Layer* first_populated() const noexcept;
  void validate_geometry(const Tensor& keys, std::size_t layer) const;
  std::size_t common_length(const char* operation) const;
  Layer resized(const Layer& layer, std::size_t capacity) const;
  Tensor dense(const Layer& layer, const Tensor& ring) const;
  // How compaction copies kept tokens that are not a suffix: one launch per
  // range (sinks + window), or one launch from an index list (heavy hitters).
  enum class Gather { ByRange, ByIndexList };
  Layer compacted(const Layer& layer, const KeptTokens& kept, Gather gather) const;
  void keep_in_every_layer(const std::vector<KeptTokens>& kept, Gather gather);

  std::vector<Layer> layers_;
  Stream stream_;
};

}  // namespace micache
