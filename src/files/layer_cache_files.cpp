// The file format of the per-layer caches (AttentionCache, ActivationCache, FullActivationCache): one
// TransformerLens-named tensor per layer. Through each class's public surface only (n_layers, get_layer,
// with_capacity, push).
#include <string>
#include <vector>

#include "micache/activation_cache.hpp"
#include "micache/attention_cache.hpp"
#include "micache/full_activation_cache.hpp"
#include "micache/safetensors.hpp"
#include "src/files/file_format.hpp"

namespace micache {
namespace {

template <class Cache>
void save_layers(const Cache& cache, const char* suffix, const char* kind, const std::string& path) {
  SafetensorsWriter writer;
  for (std::size_t i = 0; i < cache.n_layers(); ++i) writer.add(detail::layer_name(i, suffix), *cache.get_layer(i));
  writer.set_metadata(detail::kCacheKey, kind);
  writer.write(path);
}

// Pushes the file's layers, allocated on `stream`, into `make(layer count)`.
template <class Make>
auto load_layers(const std::string& path, Device device, Stream stream, const char* suffix, const char* kind,
                 Make make) {
  const SafetensorsReader file(path);
  detail::check_kind(file, kind);
  const std::size_t n = detail::count_layers(file, suffix);
  auto cache = make(n);
  for (std::size_t i = 0; i < n; ++i)
    cache.push(detail::read_float(file, detail::layer_name(i, suffix), device, stream));
  return cache;
}

}  // namespace

void AttentionCache::save(const std::string& path) const {
  save_layers(*this, "attn.hook_pattern", "AttentionCache", path);
}

AttentionCache AttentionCache::load(const std::string& path, Device device, Stream stream) {
  return load_layers(path, device, stream, "attn.hook_pattern", "AttentionCache",
                     [&](std::size_t n) { return AttentionCache::with_capacity(n, stream); });
}

void ActivationCache::save(const std::string& path) const {
  save_layers(*this, "hook_resid_post", "ActivationCache", path);
}

ActivationCache ActivationCache::load(const std::string& path, Device device, Stream stream) {
  return load_layers(path, device, stream, "hook_resid_post", "ActivationCache", &ActivationCache::with_capacity);
}

void FullActivationCache::save(const std::string& path) const {
  save_layers(*this, "hook_resid_post", "FullActivationCache", path);
}

FullActivationCache FullActivationCache::load(const std::string& path, Device device, Stream stream) {
  return load_layers(path, device, stream, "hook_resid_post", "FullActivationCache",
                     [&](std::size_t n) { return FullActivationCache::with_capacity(n, stream); });
}

}  // namespace micache
