// Fuzz target: compressed KV cache configs, construction and the push / score / evict path.
//
// - KvCacheConfig from the input (head_dim 0, odd, small even or past 131070; bits and value_bits 0..17 and
//   more; projections 0 up to past 65535; any seed; either estimator): validate() must throw the first code of
//   its documented order (ZeroDimension, OddDimension, DimensionTooLarge, InvalidBitWidth for bits then
//   value_bits, ZeroProjections, DimensionTooLarge) or nothing.
// - Construction of a MultiHeadKvCache, GqaKvCache, SlidingWindowKvCache or KvCacheCompressor with arbitrary head
//   counts and window: must throw EmptyInput (a zero count), DimensionMismatch (query heads not a multiple of kv
//   heads) or the config's code (one of them when several are wrong), else succeed. Valid configs above head_dim
//   64 or 64 projections are only validated, not built (their tables are large by design).
// - Then a sequence of calls, with the length the cache must hold tracked: push_token with the wrong number of
//   vectors or a vector of the wrong length (DimensionMismatch) or NaN/Inf in one (NonFiniteInput), which must
//   change nothing (length and records), and otherwise add one token (the window keeps the last window_size)
//   without touching the records already held; heads().push of [heads, dim] or [heads, tokens, dim] F32/F16/BF16
//   tensors (DimensionMismatch, Shape, Config, NonFiniteInput as documented); attention_scores and
//   attention_output with good or bad queries ([query heads][len] and [query heads][head_dim], finite, or the
//   documented errors; EmptyInput for an output over an empty cache); keep_last / evict_outside_window (the last
//   tokens' records kept); decode_keys / decode_values and a head's scores (len vectors, finite); reserve (small,
//   or 2^40 tokens and more: OutOfMemory); clear. Finite inputs have magnitude at most 1e15, so no exact score
//   overflows f32. After every call: len, is_empty, memory_usage and the records' shape match.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fuzz/fuzz_support.hpp"
#include "micache/micache.hpp"

namespace micache::fuzz {
namespace {

constexpr std::size_t kMaxSteps = 24;
constexpr std::size_t kMaxBuiltDim = 64;
using Vectors = std::vector<std::vector<float>>;

// ---- config and construction ------------------------------------------------------------------------------------

KvCacheConfig pick_config(FuzzedDataProvider& in) {
  constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();
  KvCacheConfig config;
  config.head_dim = in.PickValueInArray<std::size_t>({2, 4, 6, 8, 16, 64, 0, 1, 3, 7, 131070, 131071, 131072, kMax});
  config.bits = in.PickValueInArray<unsigned>({4, 1, 2, 3, 5, 6, 7, 8, 0, 9, 12, 16, 17, 4096});
  config.value_bits = in.PickValueInArray<unsigned>({0, 1, 2, 3, 8, 9, 16, 17});
  config.projections = in.PickValueInArray<std::size_t>({8, 1, 2, 3, 16, 32, 64, 0, 65535, 65536, kMax});
  config.seed = in.ConsumeIntegral<std::uint64_t>();
  config.estimator = in.ConsumeBool() ? ScoreEstimator::Qjl : ScoreEstimator::Mse;
  return config;
}

// The code KvCacheConfig::validate documents for `config`, first rule first.
std::optional<ErrorCode> config_error(const KvCacheConfig& c) {
  const auto bad_bits = [](unsigned bits) { return bits < 1 || bits > 8; };
  if (c.head_dim == 0) return ErrorCode::ZeroDimension;
  if (c.head_dim % 2 != 0) return ErrorCode::OddDimension;
  if (c.head_dim / 2 > 65535) return ErrorCode::DimensionTooLarge;
  if (bad_bits(c.bits) || (c.value_bits != 0 && bad_bits(c.value_bits))) return ErrorCode::InvalidBitWidth;
  if (c.projections == 0) return ErrorCode::ZeroProjections;
  if (c.projections > 65535) return ErrorCode::DimensionTooLarge;
  return std::nullopt;
}

// 1..max, or 0 (the last choice).
std::size_t pick_count(FuzzedDataProvider& in, std::size_t max) {
  const std::size_t v = in.ConsumeIntegralInRange<std::size_t>(0, max);
  return v == max ? 0 : v + 1;
}

// ---- one interface over the four caches --------------------------------------------------------------------------

using Cache = std::variant<MultiHeadKvCache, GqaKvCache, SlidingWindowKvCache, KvCacheCompressor>;

const CompressedHeads& heads_of(const Cache& cache) {
  return std::visit(
      [](const auto& c) -> const CompressedHeads& {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, SlidingWindowKvCache>) {
          return c.cache().heads();
        } else {
          return c.heads();
        }
      },
      cache);
}

// The store a caller may mutate directly (not the sliding window's).
CompressedHeads* mutable_heads(Cache& cache) {
  if (auto* c = std::get_if<MultiHeadKvCache>(&cache)) return &c->heads();
  if (auto* c = std::get_if<GqaKvCache>(&cache)) return &c->heads();
  if (auto* c = std::get_if<KvCacheCompressor>(&cache)) return &c->heads();
  return nullptr;
}

std::size_t query_heads(const Cache& cache) {
  if (const auto* c = std::get_if<GqaKvCache>(&cache)) return c->num_query_heads();
  if (const auto* c = std::get_if<SlidingWindowKvCache>(&cache)) return c->cache().num_query_heads();
  return heads_of(cache).num_heads();
}

std::size_t window_of(const Cache& cache) {
  const auto* c = std::get_if<SlidingWindowKvCache>(&cache);
  return c != nullptr ? c->window_size() : std::numeric_limits<std::size_t>::max();
}

void push_token(Cache& cache, const Vectors& keys, const Vectors& values) {
  std::visit(
      [&](auto& c) {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, KvCacheCompressor>) {
          c.push(keys.at(0), values.at(0));
        } else {
          c.push_token(keys, values);
        }
      },
      cache);
}

Vectors attention_scores(const Cache& cache, const Vectors& queries) {
  return std::visit(
      [&](const auto& c) {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, KvCacheCompressor>) {
          return Vectors{c.attention_scores(queries.at(0))};
        } else {
          return c.attention_scores(queries);
        }
      },
      cache);
}

Vectors attention_output(const Cache& cache, const Vectors& queries) {
  return std::visit(
      [&](const auto& c) {
        if constexpr (std::is_same_v<std::decay_t<decltype(c)>, KvCacheCompressor>) {
          return Vectors{c.attention_output(queries.at(0))};
        } else {
          return c.attention_output(queries);
        }
      },
      cache);
}

std::optional<KvHeadView> head_view(const Cache& cache, std::size_t head) {
  if (const auto* c = std::get_if<MultiHeadKvCache>(&cache)) return c->head(head);
  if (const auto* c = std::get_if<GqaKvCache>(&cache)) return c->kv_head(head);
  if (const auto* c = std::get_if<SlidingWindowKvCache>(&cache)) return c->cache().kv_head(head);
  return head == 0 ? std::optional(KvHeadView(heads_of(cache), 0)) : std::nullopt;
}

// ---- inputs -------------------------------------------------------------------------------------------------------

// A finite component of magnitude at most 1e15, or (the last choices) NaN or an infinity.
float pick_component(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 31)) {
    case 24:
      return 1e15f;
    case 25:
      return -1e15f;
    case 26:
      return 1e-30f;
    case 27:
      return 1e-41f;
    case 28:
      return -0.0f;
    case 29:
      return std::numeric_limits<float>::quiet_NaN();
    case 30:
      return std::numeric_limits<float>::infinity();
    case 31:
      return -std::numeric_limits<float>::infinity();
    default:
      return static_cast<float>(in.ConsumeIntegralInRange(-8, 8)) * 0.25f;
  }
}

bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

// `count` vectors of `dim` components, and the codes they give: rarely one vector more or fewer (unless
// `fixed_count`, for the calls that take one vector), or one vector one component longer or shorter.
Vectors pick_vectors(FuzzedDataProvider& in, std::size_t count, std::size_t dim, bool fixed_count, Codes& codes) {
  if (!fixed_count && in.ConsumeIntegralInRange(0, 15) == 15) {
    count = in.ConsumeBool() ? count + 1 : count - 1;
    codes.add(ErrorCode::DimensionMismatch);
  }
  Vectors out(count);
  for (std::vector<float>& v : out) {
    for (std::size_t i = 0; i < dim; ++i) v.push_back(pick_component(in));
    if (!all_finite(v)) codes.add(ErrorCode::NonFiniteInput);
  }
  if (!out.empty() && in.ConsumeIntegralInRange(0, 15) == 15) {
    std::vector<float>& v = out[in.ConsumeIntegralInRange<std::size_t>(0, out.size() - 1)];
    if (in.ConsumeBool() || v.empty()) {
      v.push_back(0.0f);
    } else {
      v.pop_back();
    }
    codes.add(ErrorCode::DimensionMismatch);
  }
  return out;
}

// ---- the model's checks -------------------------------------------------------------------------------------------

std::string bytes_of(const Tensor& t) {
  const std::vector<std::byte> bytes = t.to_host_bytes();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Every head's records, oldest token first.
struct Records {
  std::vector<std::string> keys;  // per head: len * key_record_bytes
  std::vector<std::string> values;
};

Records records_of(const CompressedHeads& heads) {
  const auto [keys, values] = heads.records();
  const std::string k = bytes_of(keys);
  const std::string v = bytes_of(values);
  Records out;
  const std::size_t h = heads.num_heads();
  for (std::size_t i = 0; i < h; ++i) {
    out.keys.push_back(k.substr(i * k.size() / h, k.size() / h));
    out.values.push_back(v.substr(i * v.size() / h, v.size() / h));
  }
  return out;
}

// True when tokens [from, from + count) of `before` are tokens [0, count) of `after`, in every head.
bool kept(const Records& before, const Records& after, const CompressedHeads& heads, std::size_t from,
          std::size_t count) {
  const std::size_t kb = heads.key_record_bytes();
  const std::size_t vb = heads.value_record_bytes();
  for (std::size_t h = 0; h < heads.num_heads(); ++h) {
    if (before.keys[h].compare(from * kb, count * kb, after.keys[h], 0, count * kb) != 0 ||
        before.values[h].compare(from * vb, count * vb, after.values[h], 0, count * vb) != 0) {
      return false;
    }
  }
  return true;
}

void check_state(const Cache& cache, std::size_t len, const char* after) {
  const CompressedHeads& heads = heads_of(cache);
  const std::size_t h = heads.num_heads();
  check(heads.len() == len && heads.is_empty() == (len == 0), "after {}: len {}, model {}", after, heads.len(), len);
  check(heads.memory_usage() == len * h * (heads.key_record_bytes() + heads.value_record_bytes()),
        "after {}: memory_usage {} for {} tokens", after, heads.memory_usage(), len);
  check(len != 0 || heads.compression_ratio() == 1.0, "after {}: compression_ratio {} when empty", after,
        heads.compression_ratio());
  const auto [keys, values] = heads.records();
  check(keys.dims() == std::vector<std::size_t>{h, len, heads.key_record_bytes()} &&
            values.dims() == std::vector<std::size_t>{h, len, heads.value_record_bytes()},
        "after {}: records {} and {} for {} tokens", after, keys.shape().to_string(), values.shape().to_string(), len);
}

void check_rows(const Vectors& rows, std::size_t count, std::size_t length, const char* what) {
  check(rows.size() == count, "{}: {} rows, expected {}", what, rows.size(), count);
  for (const std::vector<float>& row : rows) {
    check(row.size() == length && all_finite(row), "{}: a row of {} values (expected {}) or not finite", what,
          row.size(), length);
  }
}

// ---- the calls ----------------------------------------------------------------------------------------------------

void push_token_step(FuzzedDataProvider& in, Cache& cache, std::size_t& len) {
  const CompressedHeads& heads = heads_of(cache);
  const bool single = std::holds_alternative<KvCacheCompressor>(cache);  // push(key, value): one vector each
  Codes codes;
  const Vectors keys = pick_vectors(in, heads.num_heads(), heads.config().head_dim, single, codes);
  const Vectors values = pick_vectors(in, heads.num_heads(), heads.config().head_dim, single, codes);
  const Records before = records_of(heads);
  expect(attempt("push_token", [&] { push_token(cache, keys, values); }), codes, "push_token");
  const Records after = records_of(heads);
  if (!codes.empty()) {
    check(heads.len() == len && after.keys == before.keys && after.values == before.values,
          "a failed push_token changed the cache");
    return;
  }
  const std::size_t dropped = len + 1 > window_of(cache) ? 1 : 0;
  check(kept(before, after, heads, dropped, len - dropped), "push_token changed the records already held");
  len = len + 1 - dropped;
}

void push_tensor_step(FuzzedDataProvider& in, CompressedHeads& heads, std::size_t& len) {
  const DType dtype = in.PickValueInArray({DType::F32, DType::F16, DType::BF16});
  const std::size_t tokens = in.ConsumeIntegralInRange<std::size_t>(0, 3);
  const bool rank3 = tokens != 1 || in.ConsumeBool();
  std::size_t h = heads.num_heads();
  std::size_t d = heads.config().head_dim;
  Codes codes;
  switch (in.ConsumeIntegralInRange(0, 15)) {
    case 12:
      ++h;
      codes.add(ErrorCode::DimensionMismatch);
      break;
    case 13:
      ++d;
      codes.add(ErrorCode::DimensionMismatch);
      break;
    case 14:
      codes.add(ErrorCode::Config);
      break;  // I32 keys
    case 15:
      codes.add(ErrorCode::Shape);
      break;  // values of another shape
    default:
      break;
  }
  std::vector<float> keys(h * tokens * d);
  std::vector<float> values(keys.size());
  for (std::vector<float>* v : {&keys, &values}) {
    for (float& x : *v) {
      x = pick_component(in);
      // Stored values: F16 turns 1e15 into infinity.
      const float stored = dtype == DType::F16    ? f16_to_f32(f32_to_f16(x))
                           : dtype == DType::BF16 ? bf16_to_f32(f32_to_bf16(x))
                                                  : x;
      if (!std::isfinite(stored)) codes.add(ErrorCode::NonFiniteInput);
    }
  }
  const Shape shape = rank3 ? Shape{h, tokens, d} : Shape{h, d};
  const Tensor k = codes.contains(ErrorCode::Config)
                       ? Tensor::from_host_i32(std::vector<std::int32_t>(keys.size()), shape)
                       : Tensor::from_host(keys, shape, dtype);
  const Tensor v = codes.contains(ErrorCode::Shape)
                       ? Tensor::from_host(std::vector<float>(h * (tokens + 1) * d), {h, tokens + 1, d}, dtype)
                       : Tensor::from_host(values, shape, dtype);
  const std::size_t before = heads.len();
  expect(attempt("heads().push", [&] { heads.push(k, v); }), codes, "heads().push");
  if (codes.empty()) len += rank3 ? tokens : 1;
  check(heads.len() == len, "heads().push: len {} from {}, model {}", heads.len(), before, len);
}

void query_step(FuzzedDataProvider& in, const Cache& cache, std::size_t len, bool output) {
  const CompressedHeads& heads = heads_of(cache);
  const bool single = std::holds_alternative<KvCacheCompressor>(cache);  // attention_*(query): one vector
  Codes codes;
  const Vectors queries = pick_vectors(in, query_heads(cache), heads.config().head_dim, single, codes);
  if (output && len == 0) codes.add(ErrorCode::EmptyInput);
  Vectors rows;
  const char* what = output ? "attention_output" : "attention_scores";
  expect(attempt(what, [&] { rows = output ? attention_output(cache, queries) : attention_scores(cache, queries); }),
         codes, what);
  if (codes.empty()) check_rows(rows, query_heads(cache), output ? heads.config().head_dim : len, what);
}

void decode_step(FuzzedDataProvider& in, const Cache& cache, std::size_t len) {
  const CompressedHeads& heads = heads_of(cache);
  const std::size_t dim = heads.config().head_dim;
  const std::size_t head = in.ConsumeIntegralInRange<std::size_t>(0, heads.num_heads());
  const std::optional<KvHeadView> view = head_view(cache, head);
  check(view.has_value() == (head < heads.num_heads()), "head({}) of {} heads", head, heads.num_heads());
  if (view) {
    check_rows(view->decode_keys(), len, dim, "decode_keys");
    check_rows(view->decode_values(), len, dim, "decode_values");
    Codes codes;
    const Vectors query = pick_vectors(in, 1, dim, true, codes);
    std::vector<float> scores;
    expect(attempt("KvHeadView::attention_scores", [&] { scores = view->attention_scores(query.at(0)); }), codes,
           "KvHeadView::attention_scores");
    if (codes.empty()) check_rows({scores}, 1, len, "KvHeadView::attention_scores");
  }
  for (const Tensor& t : {heads.decode_keys(), heads.decode_values()}) {
    check(t.dims() == std::vector<std::size_t>{heads.num_heads(), len, dim} && all_finite(t.to_host_f32()),
          "decode: {} for {} tokens, or not finite", t.shape().to_string(), len);
  }
}

void keep_last_step(FuzzedDataProvider& in, Cache& cache, CompressedHeads& heads, std::size_t& len) {
  const std::size_t window = in.ConsumeIntegralInRange<std::size_t>(0, len + 1);
  const Records before = records_of(heads);
  if (auto* compressor = std::get_if<KvCacheCompressor>(&cache)) {
    compressor->evict_outside_window(window);
  } else {
    heads.keep_last(window);
  }
  const std::size_t kept_tokens = std::min(len, window);
  check(kept(before, records_of(heads), heads, len - kept_tokens, kept_tokens), "keep_last({}) of {} tokens", window,
        len);
  len = kept_tokens;
}

void reserve_step(FuzzedDataProvider& in, CompressedHeads& heads) {
  const bool huge = in.ConsumeIntegralInRange(0, 7) == 7;
  const std::size_t tokens = huge ? pick_huge(in) : in.ConsumeIntegralInRange<std::size_t>(0, 64);
  const Records before = records_of(heads);
  expect(attempt("reserve", [&] { heads.reserve(tokens); }), huge ? Codes{ErrorCode::OutOfMemory} : Codes{}, "reserve");
  const Records after = records_of(heads);
  check(after.keys == before.keys && after.values == before.values, "reserve({}) changed the records", tokens);
  check(huge || heads.memory_reserved() >=
                    tokens * heads.num_heads() * (heads.key_record_bytes() + heads.value_record_bytes()),
        "reserve({}): {} bytes reserved", tokens, heads.memory_reserved());
}

}  // namespace
}  // namespace micache::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace micache;
  using namespace micache::fuzz;
  FuzzedDataProvider in(data, size);
  const KvCacheConfig config = pick_config(in);
  const std::optional<ErrorCode> config_code = config_error(config);
  expect(attempt("validate", [&] { config.validate(); }), config_code ? Codes{*config_code} : Codes{}, "validate");

  const int kind = in.ConsumeIntegralInRange(0, 3);  // MultiHeadKvCache, GqaKvCache, SlidingWindowKvCache, compressor
  const std::size_t kv_heads = pick_count(in, 4);
  const std::size_t query_heads =
      in.ConsumeIntegralInRange(0, 7) == 7 ? pick_count(in, 8) : kv_heads * pick_count(in, 3);
  const std::size_t window = pick_count(in, 6);
  Codes codes;
  if (config_code) codes.add(*config_code);
  if (kind != 3 && kv_heads == 0) codes.add(ErrorCode::EmptyInput);
  if (kind == 1 || kind == 2) {
    if (query_heads == 0) codes.add(ErrorCode::EmptyInput);
    if (kv_heads != 0 && query_heads % kv_heads != 0) codes.add(ErrorCode::DimensionMismatch);
  }
  if (kind == 2 && window == 0) codes.add(ErrorCode::EmptyInput);
  if (codes.empty() && (config.head_dim > kMaxBuiltDim || config.projections > kMaxBuiltDim)) return 0;

  std::optional<Cache> cache;
  expect(attempt("construction",
                 [&] {
                   switch (kind) {
                     case 0:
                       cache.emplace(std::in_place_type<MultiHeadKvCache>, kv_heads, config);
                       break;
                     case 1:
                       cache.emplace(std::in_place_type<GqaKvCache>, kv_heads, query_heads, config);
                       break;
                     case 2:
                       cache.emplace(std::in_place_type<SlidingWindowKvCache>, kv_heads, query_heads, window, config);
                       break;
                     default:
                       cache.emplace(std::in_place_type<KvCacheCompressor>, config);
                       break;
                   }
                 }),
         codes, "construction");
  if (!cache) return 0;

  std::size_t len = 0;
  for (std::size_t steps = 0; steps < kMaxSteps && in.remaining_bytes() > 0; ++steps) {
    // heads().push, keep_last and reserve: on every cache but the sliding window, which evicts by itself.
    CompressedHeads* heads = mutable_heads(*cache);
    const int call = in.ConsumeIntegralInRange(0, 11);
    constexpr const char* kNames[] = {"push_token",       "push_token",       "push_token",       "heads().push",
                                      "attention_scores", "attention_scores", "attention_output", "attention_output",
                                      "keep_last",        "decode",           "reserve",          "clear"};
    switch (call) {
      case 0:
      case 1:
      case 2:
        push_token_step(in, *cache, len);
        break;
      case 3:
        if (heads != nullptr) push_tensor_step(in, *heads, len);
        break;
      case 4:
      case 5:
        query_step(in, *cache, len, false);
        break;
      case 6:
      case 7:
        query_step(in, *cache, len, true);
        break;
      case 8:
        if (heads != nullptr) keep_last_step(in, *cache, *heads, len);
        break;
      case 9:
        decode_step(in, *cache, len);
        break;
      case 10:
        if (heads != nullptr) reserve_step(in, *heads);
        break;
      default:
        std::visit([](auto& c) { c.clear(); }, *cache);
        len = 0;
        break;
    }
    check_state(*cache, len, kNames[call]);
  }
  return 0;
}
