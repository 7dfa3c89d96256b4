#include "src/quant/head_tables.hpp"

#include <fmt/format.h>

#include <new>
#include <vector>

#include "micache/backend/detail/record_layout.hpp"
#include "micache/error.hpp"
#include "src/quant/vector_quantizer.hpp"

namespace micache::detail {
namespace {

KindTables make_kind(std::size_t heads, const KvCacheConfig& config, unsigned bits, bool keys, Device device,
                     Stream stream) {
  std::vector<std::int32_t> signs;
  std::vector<float> projections;
  KindTables tables;
  for (std::size_t h = 0; h < heads; ++h) {
    const VectorQuantizer quantizer(static_cast<std::uint32_t>(config.head_dim), bits,
                                    keys ? static_cast<std::uint32_t>(config.projections) : 0u, config.seed,
                                    2 * h + (keys ? 0 : 1));
    for (const std::uint32_t word : quantizer.rotation_signs()) signs.push_back(static_cast<std::int32_t>(word));
    projections.insert(projections.end(), quantizer.projection_matrix().begin(), quantizer.projection_matrix().end());
    if (h == 0) {
      tables.layout = quantizer.layout();
      tables.sign_words = quantizer.rotation_signs().size();
      tables.inv_alpha = quantizer.inv_alpha();
      tables.centroids = Tensor::from_host(quantizer.codebook().centroids, {quantizer.codebook().centroids.size()},
                                           DType::F32, device, stream);
      tables.boundaries = Tensor::from_host(quantizer.codebook().boundaries, {quantizer.codebook().boundaries.size()},
                                            DType::F32, device, stream);
    }
  }
  tables.signs = Tensor::from_host_i32(signs, {heads, tables.sign_words}, device, stream);
  if (keys) {
    tables.projections = Tensor::from_host(projections, {heads, config.projections, tables.layout.padded_dim},
                                           DType::F32, device, stream);
  }
  return tables;
}

}  // namespace

std::size_t KindTables::bytes() const noexcept {
  return signs.nbytes() + centroids.nbytes() + boundaries.nbytes() + (projections.defined() ? projections.nbytes() : 0);
}

HeadTables make_head_tables(std::size_t heads, const KvCacheConfig& config, Device device, Stream stream) {
  try {
    HeadTables tables;
    tables.keys = make_kind(heads, config, config.bits, true, device, stream);
    tables.values =
        make_kind(heads, config, config.value_bits != 0 ? config.value_bits : config.bits, false, device, stream);
    return tables;
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::OutOfMemory,
                fmt::format("the host cannot hold the tables of {} heads (head_dim {}, {} projections)", heads,
                            config.head_dim, config.projections));
  }
}

std::uint64_t projection_bytes(std::uint64_t heads, const KvCacheConfig& config) noexcept {
  return heads * config.projections * next_power_of_two(static_cast<std::uint32_t>(config.head_dim)) * sizeof(float);
}

RecordRing ring_of(const KindTables& tables, const Tensor& records, std::size_t heads, std::size_t start) {
  RecordRing ring;
  ring.layout = tables.layout;
  ring.records = records.defined() ? static_cast<std::uint8_t*>(const_cast<void*>(records.data())) : nullptr;
  ring.heads = heads;
  ring.capacity = records.defined() ? records.dim(1) : 0;
  ring.start = start;
  ring.signs = static_cast<const std::uint32_t*>(tables.signs.data());
  ring.sign_words = tables.sign_words;
  ring.centroids = static_cast<const float*>(tables.centroids.data());
  ring.boundaries = static_cast<const float*>(tables.boundaries.data());
  ring.projections = tables.projections.defined() ? static_cast<const float*>(tables.projections.data()) : nullptr;
  return ring;
}

RecordRing one_head(RecordRing ring, std::size_t head) noexcept {
  ring.records += head * ring.capacity * ring.layout.record_bytes;
  ring.signs += head * ring.sign_words;
  if (ring.projections != nullptr) ring.projections += head * ring.layout.projections * ring.layout.padded_dim;
  ring.heads = 1;
  return ring;
}

}  // namespace micache::detail
