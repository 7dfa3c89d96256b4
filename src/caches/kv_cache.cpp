#include "micache/kv_cache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/error.hpp"
#include "micache/registry.hpp"
#include "src/core/ring_copy.hpp"

namespace micache {
namespace {

constexpr std::size_t kMinCapacity = 16;

std::size_t planes_of(const Tensor& t) { return t.dim(0) * t.dim(1); }
std::size_t token_bytes_of(const Tensor& t) { return t.dim(3) * dtype_size(t.dtype()); }

using detail::copy_ring;
using detail::RingCopy;

// Keys and values together, one launch.
void copy_kv(const Tensor& src_keys, const Tensor& src_values, Tensor& dst_keys, Tensor& dst_values,
             const RingCopy& what) {
  const Tensor* sources[] = {&src_keys, &src_values};
  Tensor* targets[] = {&dst_keys, &dst_values};
  detail::copy_rings(sources, targets, 2, what);
}

// The first `count` positions of `runs`.
template <class Run>
std::vector<Run> front_runs(const std::vector<Run>& runs, std::size_t count) {
  std::vector<Run> out;
  for (const Run& run : runs) {
    if (count == 0) break;
    const std::size_t take = std::min(count, run.length);
    out.push_back({run.begin, take});
    count -= take;
  }
  return out;
}

// Appends positions [begin, begin + length) to `runs`, extending the last run when it ends at `begin`.
template <class Run>
void extend_runs(std::vector<Run>& runs, std::size_t begin, std::size_t length) {
  if (!runs.empty() && runs.back().begin + runs.back().length == begin) {
    runs.back().length += length;
  } else {
    runs.push_back({begin, length});
  }
}

// Every position of `runs`, in order.
template <class Run>
std::vector<std::size_t> expand_runs(const std::vector<Run>& runs) {
  std::vector<std::size_t> out;
  for (const Run& run : runs) {
    for (std::size_t i = 0; i < run.length; ++i) out.push_back(run.begin + i);
  }
  return out;
}

// `runs` without its first `count` positions.
template <class Run>
std::vector<Run> drop_front_runs(const std::vector<Run>& runs, std::size_t count) {
  std::vector<Run> out;
  for (const Run& run : runs) {
    const std::size_t drop = std::min(count, run.length);
    count -= drop;
    if (run.length > drop) out.push_back({run.begin + drop, run.length - drop});
  }
  return out;
}

// A new [batch, kv_heads, capacity, head_dim] buffer shaped as `like`, allocated on `stream`.
Tensor ring_buffer(const Tensor& like, std::size_t capacity, Stream stream) {
  return Tensor::empty({like.dim(0), like.dim(1), capacity, like.dim(3)}, like.dtype(), like.device(), stream);
}

void validate_pair(const Tensor& keys, const Tensor& values, const char* what) {
  if (!keys.defined() || !values.defined()) {
    throw Error(ErrorCode::Config, fmt::format("{}: undefined keys or values tensor", what));
  }
  if (keys.rank() != 4) {
    throw Error(ErrorCode::Shape, fmt::format("{}: keys must be [batch, kv_heads, seq_len, head_dim], got {}", what,
                                              keys.shape().to_string()));
  }
  if (keys.shape() != values.shape()) {
    throw Error(ErrorCode::Shape, fmt::format("{}: keys {} and values {} differ in shape", what,
                                              keys.shape().to_string(), values.shape().to_string()));
  }
  if (!is_float_dtype(keys.dtype()) || keys.dtype() != values.dtype()) {
    throw Error(ErrorCode::Config, fmt::format("{}: keys ({}) and values ({}) must share one float dtype", what,
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
  if (layer >= layers_.size()) {
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
      throw Error(ErrorCode::Shape,
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
  next.runs = {{0, next.length}};
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
      throw Error(ErrorCode::Shape, fmt::format("append: new keys {} do not extend layer {} [{}, {}, {}, {}]",
                                                new_keys.shape().to_string(), layer_index, k.dim(0), k.dim(1),
                                                layer.length, k.dim(3)));
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
  extend_runs(next.runs, next.next_position, added);
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
  Tensor out = Tensor::empty({ring.dim(0), ring.dim(1), layer.length, ring.dim(3)}, ring.dtype(), ring.device(),
                             stream_);
  copy_ring(ring, out, {.src_start = layer.start, .tokens = layer.length});
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

std::size_t KVCache::common_length(const char* operation) const {
  const Layer* first = first_populated();
  if (first == nullptr) return 0;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    if (layer.populated() && layer.length != first->length) {
      throw Error(ErrorCode::Shape,
                  fmt::format("{}: layer {} holds {} tokens, the first populated layer {}; finish the step first",
                              operation, i, layer.length, first->length));
    }
  }
  return first->length;
}

void KVCache::drop_oldest(std::size_t keep) {
  for (Layer& layer : layers_) {
    if (!layer.populated() || layer.length <= keep) continue;
    const std::size_t dropped = layer.length - keep;
    layer.start = layer.capacity() == 0 ? 0 : (layer.start + dropped) % layer.capacity();
    layer.runs = drop_front_runs(layer.runs, dropped);
    layer.length = keep;
  }
}

bool KVCache::trim_to(std::size_t max_seq_len) {
  const std::size_t length = common_length("trim_to");
  if (length <= max_seq_len) return false;
  drop_oldest(max_seq_len);
  return true;
}

bool KVCache::enforce_memory_limit(std::size_t max_bytes, EvictionPolicy policy) {
  const std::size_t current = memory_usage();
  if (current <= max_bytes) return false;
  const std::size_t length = common_length("enforce_memory_limit");
  std::size_t keep = 0;
  if (policy == EvictionPolicy::ThreeQuarters) {
    keep = length * 3 / 4;
    if (keep == 0) return false;
  } else {
    keep = max_bytes / (current / length);
  }
  drop_oldest(keep);
  return true;
}

bool KVCache::evict_to_window(std::size_t sinks, std::size_t window) {
  const std::size_t length = common_length("evict_to_window");
  if (length <= sinks || length - sinks <= window) return false;  // sinks + window may not fit in size_t
  std::vector<Layer> next = layers_;
  for (Layer& layer : next) {
    if (!layer.populated()) continue;
    Layer compact = layer;
    compact.keys = ring_buffer(layer.keys, layer.capacity(), stream_);
    compact.values = ring_buffer(layer.values, layer.capacity(), stream_);
    compact.start = 0;
    compact.length = sinks + window;
    const std::size_t window_start = (layer.start + length - window) % layer.capacity();
    copy_kv(layer.keys, layer.values, compact.keys, compact.values, {.src_start = layer.start, .tokens = sinks});
    copy_kv(layer.keys, layer.values, compact.keys, compact.values,
            {.src_start = window_start, .dst_start = sinks, .tokens = window});
    compact.runs = front_runs(layer.runs, sinks);
    for (const Run& run : drop_front_runs(layer.runs, length - window)) compact.runs.push_back(run);
    layer = std::move(compact);
  }
  layers_ = std::move(next);
  return true;
}

// Kept logical indices per layer (empty for empty layers), ascending: the
// `heavy` best-scored of the first length - window tokens, then the window.
std::vector<std::vector<std::int32_t>> KVCache::heavy_hitter_indices(const Tensor& scores, std::size_t length,
                                                                     std::size_t heavy, std::size_t window) const {
  const Device device = first_populated()->keys.device();
  const bool per_layer = scores.rank() == 2;
  const std::size_t rows = per_layer ? layers_.size() : 1;
  std::vector<std::int32_t> top(rows * heavy);
  if (heavy > 0) {
    HeadMeanView view;
    view.data = scores.data();
    view.dtype = scores.dtype();
    view.heads.count = 1;
    view.n_rows = rows;
    view.row_stride = length;
    view.n_cols = length - window;
    Tensor indices = Tensor::empty({rows, heavy}, DType::I32, device, stream_);
    Tensor weights = Tensor::empty({rows, heavy}, DType::F32, device, stream_);
    backend_for(device).top_k_head_mean(view, heavy, static_cast<std::int32_t*>(indices.mutable_data()),
                                        static_cast<float*>(weights.mutable_data()), stream_);
    top = indices.to_host_i32();
  }
  std::vector<std::vector<std::int32_t>> kept(layers_.size());
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    if (!layers_[l].populated()) continue;
    const auto row = top.begin() + static_cast<std::ptrdiff_t>((per_layer ? l : 0) * heavy);
    kept[l].assign(row, row + static_cast<std::ptrdiff_t>(heavy));
    std::sort(kept[l].begin(), kept[l].end());
    for (std::size_t t = length - window; t < length; ++t) kept[l].push_back(static_cast<std::int32_t>(t));
  }
  return kept;
}

// The original positions of `layer`'s tokens at logical indices `kept` (ascending), as runs.
std::vector<KVCache::Run> KVCache::runs_of(const Layer& layer, const std::vector<std::int32_t>& kept) {
  const std::vector<std::size_t> original = expand_runs(layer.runs);
  std::vector<Run> runs;
  for (const std::int32_t index : kept) extend_runs(runs, original[static_cast<std::size_t>(index)], 1);
  return runs;
}

bool KVCache::evict_heavy_hitters(const Tensor& scores, std::size_t heavy, std::size_t window) {
  const std::size_t length = common_length("evict_heavy_hitters");
  if (!scores.defined()) {
    throw Error(ErrorCode::Config, "evict_heavy_hitters: undefined scores tensor");
  }
  const bool shape_ok = (scores.rank() == 1 && scores.dim(0) == length) ||
                        (scores.rank() == 2 && scores.dim(0) == layers_.size() && scores.dim(1) == length);
  if (!shape_ok) {
    throw Error(ErrorCode::Shape, fmt::format("evict_heavy_hitters: scores must be [{}] or [{}, {}], got {}", length,
                                              layers_.size(), length, scores.shape().to_string()));
  }
  if (!is_float_dtype(scores.dtype())) {
    throw Error(ErrorCode::Config, fmt::format("evict_heavy_hitters: scores must be f32, f16 or bf16, got {}",
                                               dtype_name(scores.dtype())));
  }
  if (length <= heavy || length - heavy <= window) return false;  // heavy + window may not fit in size_t
  const Device device = first_populated()->keys.device();
  if (!(scores.device() == device)) {
    throw Error(ErrorCode::Config, fmt::format("evict_heavy_hitters: scores on {}, cache on {}",
                                               scores.device().to_string(), device.to_string()));
  }
  if (length > static_cast<std::size_t>(INT32_MAX)) {
    throw Error(ErrorCode::Shape, fmt::format("evict_heavy_hitters: {} tokens exceed the int32 index range", length));
  }
  const std::vector<std::vector<std::int32_t>> kept = heavy_hitter_indices(scores, length, heavy, window);
  std::vector<Layer> next = layers_;
  for (std::size_t l = 0; l < next.size(); ++l) {
    Layer& layer = next[l];
    if (!layer.populated()) continue;
    const Tensor list = Tensor::from_host_i32(kept[l], {kept[l].size()}, device, stream_);
    Layer compact = layer;
    compact.keys = ring_buffer(layer.keys, layer.capacity(), stream_);
    compact.values = ring_buffer(layer.values, layer.capacity(), stream_);
    compact.start = 0;
    compact.length = kept[l].size();
    copy_kv(layer.keys, layer.values, compact.keys, compact.values,
            {.src_start = layer.start,
             .tokens = compact.length,
             .src_tokens = static_cast<const std::int32_t*>(list.data())});
    compact.runs = runs_of(layer, kept[l]);
    layer = std::move(compact);
  }
  layers_ = std::move(next);
  return true;
}

std::size_t KVCache::first_position(std::size_t layer) const {
  const Layer& l = layer_or_throw(layer);
  return l.runs.empty() ? l.next_position : l.runs.front().begin;
}

std::vector<std::size_t> KVCache::positions(std::size_t layer) const {
  return expand_runs(layer_or_throw(layer).runs);
}

std::size_t KVCache::next_position(std::size_t layer) const { return layer_or_throw(layer).next_position; }

std::size_t KVCache::seq_len(std::size_t layer) const { return layer_or_throw(layer).length; }

// Gives a populated layer the original `positions` of its tokens (strictly
// increasing, one per token, all below `next_position`), as a saved file holds them.
void KVCache::restore_positions(std::size_t layer_index, const std::vector<std::size_t>& positions,
                                std::size_t next_position) {
  Layer& layer = layer_or_throw(layer_index);
  if (positions.size() != layer.length) {
    throw Error(ErrorCode::Shape, fmt::format("layer {}: {} positions for {} tokens", layer_index, positions.size(),
                                              layer.length));
  }
  std::vector<Run> runs;
  for (std::size_t i = 0; i < positions.size(); ++i) {
    if ((i != 0 && positions[i] <= positions[i - 1]) || positions[i] >= next_position) {
      throw Error(ErrorCode::Shape,
                  fmt::format("layer {}: positions must increase and stay below the next position {}; entry {} is {}",
                              layer_index, next_position, i, positions[i]));
    }
    extend_runs(runs, positions[i], 1);
  }
  layer.runs = std::move(runs);
  layer.next_position = next_position;
}

}  // namespace micache
