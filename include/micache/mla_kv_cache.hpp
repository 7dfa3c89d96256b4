// MlaKvCache: bitpolar 0.3.4's compressed cache of the latent vectors of multi-head latent attention.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "micache/device.hpp"
#include "micache/kv_cache_config.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache {

namespace detail {
struct KindTables;
}

/// bitpolar's `MlaKvCache`: one compressed latent vector c_KV (DeepSeek's
/// d_c floats) per token, from which the model's up-projections give the keys
/// and values of every head.
///
/// Each latent is one key record of a one-head compressed store (see
/// CompressedHeads for the algorithm and detail::RecordLayout for the format):
/// the same quantiser, and the same bytes, as the keys of a KvCacheCompressor
/// with config `{latent_dim, bits, projections, seed}`. The QJL sketch is kept,
/// so the records also serve score estimation against absorbed queries. No
/// value record is stored (bitpolar stores none either, although its doc
/// comment says "as both key and value").
///
/// Memory: `record_bytes()` per latent (at d_c 512, 4 bits, 32 projections:
/// 268 bytes; f32: 2048, bf16: 1024; bitpolar holds 1547), in a ring growing
/// to max(needed, 2 * capacity, 16) latents. Fixed: the keys' tables of one
/// head (rotation signs, codebook, the m x p QJL matrix: 64 KiB at p 512, m
/// 32; bitpolar: 1.06 MiB), counted by `table_bytes`.
///
/// Errors (`Error` codes): the config's at construction (ZeroDimension
/// `dimension must be > 0` for latent_dim 0, OddDimension, InvalidBitWidth,
/// ZeroProjections, DimensionTooLarge: KvCacheConfig::validate);
/// DimensionMismatch `dimension mismatch: quantizer expects 8, got 6 (latent)`
/// and NonFiniteInput `input contains non-finite values (NaN or Inf) at index
/// 3 (latent)` from `push_latent`, which changes nothing on error;
/// OutOfMemory.
///
/// Stream: tables and records are allocated, and every kernel runs, on the
/// stream given at construction (null by default; it must belong to
/// `device`). Host results wait for it.
///
/// Thread safety: const members may run concurrently; mutation needs exclusive access.
class MlaKvCache {
 public:
  /// A cache of `latent_dim`-float latents on `device`, working on `stream`.
  /// Errors: the config's (see above).
  MlaKvCache(std::size_t latent_dim, unsigned bits, std::size_t projections, std::uint64_t seed,
             Device device = Device::cpu(), Stream stream = {});
  /// Move-only: a copy would share the storage that appends write in place,
  /// so two copies would overwrite each other's tokens. Move, or save and load.
  MlaKvCache(const MlaKvCache&) = delete;
  MlaKvCache& operator=(const MlaKvCache&) = delete;
  MlaKvCache(MlaKvCache&&) noexcept = default;
  MlaKvCache& operator=(MlaKvCache&&) noexcept = default;

  /// DeepSeek V3's latent cache: latent_dim 512.
  static MlaKvCache deepseek_v3(unsigned bits, std::size_t projections, std::uint64_t seed,
                                Device device = Device::cpu(), Stream stream = {}) {
    return MlaKvCache(512, bits, projections, seed, device, stream);
  }

  /// Appends one token's latent (latent_dim floats), checked on the host
  /// first. One upload and one encode call, O(p log p + m p) (p the padded
  /// latent_dim, m the projections); a full ring first grows (one copy).
  /// Errors: DimensionMismatch, NonFiniteInput, OutOfMemory; unchanged on error.
  void push_latent(std::span<const float> latent);

  /// Reconstructed latents, `len()` vectors of latent_dim floats, oldest
  /// first (the QJL residual is not added, as bitpolar). One decode call,
  /// O(len p log p), and one device-to-host copy.
  std::vector<std::vector<float>> decode_latents() const;
  /// The same, F32 `[len(), latent_dim]` on the cache's device.
  Tensor decode_latents_tensor() const;
  /// The records of the latents held, oldest first: U8 `[len(),
  /// record_bytes()]`, a new tensor on the cache's device.
  Tensor latent_codes() const;

  /// Latents held.
  std::size_t len() const noexcept { return length_; }
  bool is_empty() const noexcept { return length_ == 0; }
  std::size_t latent_dim() const noexcept { return config_.head_dim; }
  /// `{latent_dim, bits, projections, seed}`.
  const KvCacheConfig& config() const noexcept { return config_; }
  Device device() const noexcept { return device_; }
  Stream stream() const noexcept { return stream_; }

  /// f32 bytes of the latents held (len * latent_dim * 4) over memory_usage(); 1.0 when empty.
  double compression_ratio() const noexcept;
  /// Drops every latent and releases the records (the tables stay).
  void clear() noexcept;

  /// Bytes of one latent's record.
  std::size_t record_bytes() const noexcept;
  /// Bytes of the records of the latents held: len * record_bytes.
  std::size_t memory_usage() const noexcept { return length_ * record_bytes(); }
  /// Bytes the record ring holds, spare capacity included.
  std::size_t memory_reserved() const noexcept { return records_.defined() ? records_.nbytes() : 0; }
  /// Bytes of the fixed tables on the device (rotation signs, codebook, QJL matrix).
  std::size_t table_bytes() const noexcept;

 private:
  KvCacheConfig config_;
  Device device_;
  Stream stream_;
  std::shared_ptr<const detail::KindTables> tables_;
  Tensor records_;  // U8 [1, capacity, record_bytes] from slot 0, undefined when nothing is held
  std::size_t length_ = 0;
};

}  // namespace micache
