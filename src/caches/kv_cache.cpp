#include "micache/kv_cache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/caches/kv_cache_rings.hpp"
#include "src/core/checks.hpp"

namespace micache {
namespace {

constexpr std::size_t kMinCapacity = 16;

std::size_t planes_of(const Tensor& t) { return t.dim(0) * t.dim(1); }
std::size_t token_bytes_of(const Tensor& t) { return t.dim(3) * dtype_size(t.dtype()); }

using detail::copy_kv;
using detail::ring_buffer;

void validate_pair(const Tensor& keys, const Tensor& values, const char* what) {
  detail::require_defined(keys, fmt::format("{}: keys", what));
  detail::require_defined(values, fmt::format("{}: values", what));
  detail::require_rank(keys, 4, fmt::format("{}: keys", what), "[batch, kv_heads, seq_len, head_dim]");
  if (keys.shape() != values.shape()) {
    throw Error(ErrorCode::Shape, fmt::format("{}: keys {} and values {} differ in shape", what,
                                              keys.shape().to_string(), values.shape().to_string()));
  }
  detail::require_float_dtype(keys.dtype(), fmt::format("{}: keys", what));
  if (keys.dtype() != values.dtype()) {
    throw Error(ErrorCode::Config, fmt::format("{}: keys ({}) and values ({}) differ in dtype", what,
                                               dtype_name(keys.dtype()), dtype_name(values.dtype())));
  }
  if (!(keys.device() == values.device())) {
    throw Error(ErrorCode::Config, fmt::format("{}: keys on {} and values on {}", what, keys.device().to_string(),
                                               values.device().to_string()));
  }
}

}  // namespace

KVCache::KVCache(std::size_t n_layers, Stream stream) : layers_(n_layers), stream_(stream) {}

KVCache::Layer& KVCache::layer_or_throw(std::size_t layer) {
  return const_cast<Layer&>(std::as_const(*this).layer_or_throw(layer));
}

const KVCache::Layer& KVCache::layer_or_throw(std::size_t layer) const {
  if (layer >= layers_.size()) {  // candle-mi's wording, kept so that ports match messages
    throw Error(ErrorCode::Hook, fmt::format("layer {} out of range for KV cache", layer));
  }
  return layers_[layer];
}

const KVCache::Layer* KVCache::first_populated() const noexcept {
  for (const Layer& layer : layers_) {
    if (layer.populated()) return &layer;
  }
  return nullptr;
}

std::size_t KVCache::seq_len() const noexcept {
  const Layer* first = first_populated();
  return first != nullptr ? first->length : 0;
}

bool KVCache::is_empty() const noexcept { return first_populated() == nullptr; }

void KVCache::clear() noexcept {
  for (Layer& layer : layers_) layer = Layer{};
}

// Every populated layer other than `layer` must share batch, kv_heads,
// head_dim, dtype and device with `keys`.
void KVCache::validate_geometry(const Tensor& keys, std::size_t layer) const {
  for (std::size_t other = 0; other < layers_.size(); ++other) {
    const Layer& l = layers_[other];
    if (other == layer || !l.populated()) continue;
    if (keys.dim(0) != l.keys.dim(0) || keys.dim(1) != l.keys.dim(1) || keys.dim(3) != l.keys.dim(3)) {
      throw Error(
          ErrorCode::Shape,
          fmt::format("layer {}: [batch, kv_heads, head_dim] = [{}, {}, {}] differs from layer {}'s [{}, {}, {}]",
                      layer, keys.dim(0), keys.dim(1), keys.dim(3), other, l.keys.dim(0), l.keys.dim(1),
                      l.keys.dim(3)));
    }
    if (keys.dtype() != l.keys.dtype() || !(keys.device() == l.keys.device())) {
      throw Error(ErrorCode::Config, fmt::format("layer {}: {} on {} differs from layer {}'s {} on {}", layer,
                                                 dtype_name(keys.dtype()), keys.device().to_string(), other,
                                                 dtype_name(l.keys.dtype()), l.keys.device().to_string()));
    }
    return;  // all populated layers already agree with each other
  }
}

void KVCache::set_layer(std::size_t layer, const Tensor& keys, const Tensor& values) {
  layer_or_throw(layer);
  validate_pair(keys, values, "set_layer");
  validate_geometry(keys, layer);
  Layer next;
  next.keys = ring_buffer(keys, keys.dim(2), stream_);
  next.values = ring_buffer(values, values.dim(2), stream_);
  next.length = keys.dim(2);
  next.positions.append(0, next.length);
  next.next_position = next.length;
  copy_kv(keys, values, next.keys, next.values, {.tokens = next.length});
  layers_[layer] = std::move(next);
}

KVCache::Layer KVCache::resized(const Layer& layer, std::size_t capacity) const {
  Layer next = layer;
  next.keys = ring_buffer(layer.keys, capacity, stream_);
  next.values = ring_buffer(layer.values, capacity, stream_);
  next.start = 0;
  copy_kv(layer.keys, layer.values, next.keys, next.values, {.src_start = layer.start, .tokens = layer.length});
  return next;
}

void KVCache::append(std::size_t layer_index, const Tensor& new_keys, const Tensor& new_values) {
  Layer& layer = layer_or_throw(layer_index);
  validate_pair(new_keys, new_values, "append");
  if (!layer.populated()) {
    validate_geometry(new_keys, layer_index);
  } else {
    const Tensor& k = layer.keys;
    if (new_keys.dim(0) != k.dim(0) || new_keys.dim(1) != k.dim(1) || new_keys.dim(3) != k.dim(3)) {
      throw Error(ErrorCode::Shape,
                  fmt::format("append: new keys {} do not extend layer {} [{}, {}, {}, {}]",
                              new_keys.shape().to_string(), layer_index, k.dim(0), k.dim(1), layer.length, k.dim(3)));
    }
    if (new_keys.dtype() != k.dtype() || !(new_keys.device() == k.device())) {
      throw Error(ErrorCode::Config, fmt::format("append: {} on {} into layer {} of {} on {}",
                                                 dtype_name(new_keys.dtype()), new_keys.device().to_string(),
                                                 layer_index, dtype_name(k.dtype()), k.device().to_string()));
    }
  }
  const std::size_t added = new_keys.dim(2);
  if (added == 0 && layer.populated()) return;  // validated; nothing to add
  const std::size_t needed = layer.length + added;
  Layer next;
  if (!layer.populated()) {
    next.keys = ring_buffer(new_keys, std::max(needed, kMinCapacity), stream_);
    next.values = ring_buffer(new_values, std::max(needed, kMinCapacity), stream_);
  } else if (needed > layer.capacity()) {
    next = resized(layer, std::max({needed, 2 * layer.capacity(), kMinCapacity}));
  } else {
    next = layer;
  }
  const std::size_t slot = (next.start + next.length) % next.capacity();
  copy_kv(new_keys, new_values, next.keys, next.values, {.dst_start = slot, .tokens = added});
  next.length = needed;
  next.positions.append(next.next_position, added);
  next.next_position += added;
  layer = std::move(next);
}

void KVCache::reserve(std::size_t tokens) {
  std::vector<Layer> next = layers_;
  for (Layer& layer : next) {
    if (layer.populated() && layer.capacity() < tokens) layer = resized(layer, tokens);
  }
  layers_ = std::move(next);
}

void KVCache::shrink_to_fit() {
  const Layer* populated = first_populated();
  if (populated == nullptr) return;
  Backend& backend = backend_for(populated->keys.device());
  std::vector<Layer> next = layers_;
  for (Layer& layer : next) {
    if (layer.populated() && layer.capacity() != layer.length) layer = resized(layer, layer.length);
  }
  layers_ = std::move(next);  // frees the old rings on stream_
  backend.release_unused_memory(stream_);
}

Tensor KVCache::dense(const Layer& layer, const Tensor& ring) const {
  if (layer.start == 0 && layer.length == layer.capacity()) {
    return ring;
  }
  Tensor out =
      Tensor::empty({ring.dim(0), ring.dim(1), layer.length, ring.dim(3)}, ring.dtype(), ring.device(), stream_);
  detail::copy_ring(ring, out, {.src_start = layer.start, .tokens = layer.length});
  return out;
}

Tensor KVCache::keys(std::size_t layer) const {
  const Layer& l = layer_or_throw(layer);
  return l.populated() ? dense(l, l.keys) : Tensor();
}

Tensor KVCache::values(std::size_t layer) const {
  const Layer& l = layer_or_throw(layer);
  return l.populated() ? dense(l, l.values) : Tensor();
}

std::size_t KVCache::memory_usage() const noexcept {
  std::size_t bytes = 0;
  for (const Layer& layer : layers_) {
    if (layer.populated()) bytes += 2 * planes_of(layer.keys) * layer.length * token_bytes_of(layer.keys);
  }
  return bytes;
}

std::size_t KVCache::memory_reserved() const noexcept {
  std::size_t bytes = 0;
  for (const Layer& layer : layers_) {
    if (layer.populated()) bytes += layer.keys.nbytes() + layer.values.nbytes();
  }
  return bytes;
}

std::size_t KVCache::capacity() const noexcept {
  std::size_t most = 0;
  for (const Layer& layer : layers_) most = std::max(most, layer.capacity());
  return most;
}

std::size_t KVCache::first_position(std::size_t layer) const {
  const Layer& l = layer_or_throw(layer);
  return l.positions.empty() ? l.next_position : l.positions.front();
}

std::vector<std::size_t> KVCache::positions(std::size_t layer) const {
  return layer_or_throw(layer).positions.expand();
}

std::size_t KVCache::next_position(std::size_t layer) const { return layer_or_throw(layer).next_position; }

std::size_t KVCache::seq_len(std::size_t layer) const { return layer_or_throw(layer).length; }

void KVCache::restore_positions(std::size_t layer_index, const std::vector<std::size_t>& positions,
                                std::size_t next_position) {
  Layer& layer = layer_or_throw(layer_index);
  if (positions.size() != layer.length) {
    throw Error(ErrorCode::Shape,
                fmt::format("layer {}: {} positions for {} tokens", layer_index, positions.size(), layer.length));
  }
  layer.positions = PositionRuns::from_increasing(positions, next_position, fmt::format("layer {}", layer_index));
  layer.next_position = next_position;
}

}  // namespace micache
