#include "micache/mla_kv_cache.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "micache/backend/backend.hpp"
#include "micache/backend/compressed_records.hpp"
#include "micache/registry.hpp"
#include "src/caches/compressed_errors.hpp"
#include "src/core/ring_copy.hpp"
#include "src/quant/head_tables.hpp"

namespace micache {
namespace {

constexpr std::size_t kMinCapacity = 16;

// The keys' tables of one head under `config`; the values' tables are built with them and released here.
std::shared_ptr<const detail::KindTables> latent_tables(const KvCacheConfig& config, Device device, Stream stream) {
  config.validate();
  backend_for(device);  // fails early for an unusable device
  return std::make_shared<const detail::KindTables>(
      std::move(detail::make_head_tables(1, config, device, stream).keys));
}

}  // namespace

MlaKvCache::MlaKvCache(std::size_t latent_dim, unsigned bits, std::size_t projections, std::uint64_t seed,
                       Device device, Stream stream)
    : config_{.head_dim = latent_dim, .bits = bits, .projections = projections, .seed = seed},
      device_(device),
      stream_(stream),
      tables_(latent_tables(config_, device, stream)) {}

void MlaKvCache::push_latent(std::span<const float> latent) {
  if (latent.size() != config_.head_dim) throw detail::dimension_mismatch(config_.head_dim, latent.size(), "latent");
  const auto bad = std::find_if(latent.begin(), latent.end(), [](float v) { return !std::isfinite(v); });
  if (bad != latent.end()) throw detail::non_finite_input(static_cast<std::size_t>(bad - latent.begin()), "latent");
  const Tensor input = Tensor::from_host(latent, {1, config_.head_dim}, DType::F32, device_, stream_);
  Tensor next = records_;
  const std::size_t capacity = records_.defined() ? records_.dim(1) : 0;
  if (length_ == capacity) {
    next = Tensor::empty({1, std::max(2 * capacity, kMinCapacity), record_bytes()}, DType::U8, device_, stream_);
    detail::copy_ring(records_, next, {.tokens = length_});
  }
  RecordEncode encode;
  encode.ring = detail::ring_of(*tables_, next, 1, 0);
  encode.first = length_;
  encode.tokens = 1;
  encode.input = input.data();
  encode.dtype = DType::F32;
  encode.head_stride = config_.head_dim;
  encode.token_stride = config_.head_dim;
  backend_for(device_).encode_records(encode, stream_);
  records_ = std::move(next);
  ++length_;
}

Tensor MlaKvCache::decode_latents_tensor() const {
  Tensor out = Tensor::empty({length_, config_.head_dim}, DType::F32, device_, stream_);
  if (length_ != 0) {
    backend_for(device_).decode_records(detail::ring_of(*tables_, records_, 1, 0), length_,
                                        static_cast<float*>(out.mutable_data()), stream_);
  }
  return out;
}

std::vector<std::vector<float>> MlaKvCache::decode_latents() const {
  const std::vector<float> flat = decode_latents_tensor().to_host_f32();
  std::vector<std::vector<float>> latents(length_);
  for (std::size_t t = 0; t < length_; ++t) {
    latents[t].assign(flat.begin() + static_cast<std::ptrdiff_t>(t * config_.head_dim),
                      flat.begin() + static_cast<std::ptrdiff_t>((t + 1) * config_.head_dim));
  }
  return latents;
}

Tensor MlaKvCache::latent_codes() const {
  Tensor out = Tensor::empty({1, length_, record_bytes()}, DType::U8, device_, stream_);
  if (length_ != 0) detail::copy_ring(records_, out, {.tokens = length_});
  return out.select(0);
}

double MlaKvCache::compression_ratio() const noexcept {
  if (length_ == 0) return 1.0;
  return static_cast<double>(length_ * config_.head_dim * sizeof(float)) / static_cast<double>(memory_usage());
}

void MlaKvCache::clear() noexcept {
  records_ = Tensor();
  length_ = 0;
}

std::size_t MlaKvCache::record_bytes() const noexcept { return tables_->layout.record_bytes; }

std::size_t MlaKvCache::table_bytes() const noexcept { return tables_->bytes(); }

}  // namespace micache
