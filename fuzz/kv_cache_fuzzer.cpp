// Fuzz target: KVCache driven by a sequence of calls decoded from the input, checked after every call against a
// model of what the cache holds.
//
// The model keeps, per layer, whether it is populated, its geometry (batch, kv_heads, head_dim, dtype) and its kept
// tokens as (original position, key bytes, value bytes), plus the position the next appended token gets. Tokens are
// raw F32/F16/BF16 element bytes, distinct per call (NaN patterns included), so they must come back bit for bit.
//
// Calls: append (n_new from 0), set_layer, trim_to, enforce_memory_limit (both policies), evict_to_window,
// evict_heavy_hitters (F32/F16/BF16 scores with ties, -0, NaN and infinities; one ranking or one per layer),
// reserve (small, or 2^40 tokens and more, which must be OutOfMemory unless the geometry has a zero dimension),
// shrink_to_fit, clear, and the layer queries
// out of range. Arguments are sometimes wrong in one respect (layer out of range, another geometry or dtype, keys
// and values that differ, rank, undefined or non-float tensors, scores of another shape or dtype) and then the
// documented code must be thrown; windows, budgets and counts are sometimes near SIZE_MAX. A call may run with an
// allocation fault armed (Backend::fail_allocation_after), and may then also throw OutOfMemory.
//
// Rare cases are the largest choice of a range, so that an input that runs out (FuzzedDataProvider then gives the
// smallest) decodes into ordinary calls. Decisions where the header leaves a choice: a zero batch, kv_heads or head_dim
// may be accepted or refused with Shape; a heavy-hitter call with nothing to evict may return false or reject bad
// scores; enforce_memory_limit under budget may return false or report unequal layer lengths (Shape).
//
// After every call, returned or thrown, every layer's keys, values, positions and first_position, and seq_len,
// is_empty, memory_usage, capacity >= each length and memory_reserved >= memory_usage must match the model: a call
// that throws must have changed nothing.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fuzz/fuzz_support.hpp"
#include "micache/micache.hpp"

namespace micache::fuzz {
namespace {

constexpr std::size_t kMaxTokens = 64;
constexpr std::size_t kMaxSteps = 48;

struct Geometry {
  std::size_t batch = 1;
  std::size_t heads = 1;
  std::size_t head_dim = 1;
  DType dtype = DType::F32;

  std::size_t planes() const { return batch * heads; }
  std::size_t token_bytes() const { return head_dim * dtype_size(dtype); }
  bool has_zero() const { return batch == 0 || heads == 0 || head_dim == 0; }
};

struct Token {
  std::size_t position = 0;
  std::string keys;  // planes() * token_bytes() bytes, plane after plane
  std::string values;
};

struct Layer {
  bool populated = false;
  Geometry geometry;
  std::vector<Token> tokens;
  std::size_t next_position = 0;
};

using Model = std::vector<Layer>;

// ---- reading the model --------------------------------------------------------------------------------------------

const Layer* first_populated(const Model& model) {
  for (const Layer& layer : model) {
    if (layer.populated) return &layer;
  }
  return nullptr;
}

bool equal_lengths(const Model& model) {
  const Layer* first = first_populated(model);
  return std::all_of(model.begin(), model.end(),
                     [&](const Layer& l) { return !l.populated || l.tokens.size() == first->tokens.size(); });
}

std::size_t seq_len(const Model& model) {
  const Layer* first = first_populated(model);
  return first != nullptr ? first->tokens.size() : 0;
}

std::size_t memory_usage(const Model& model) {
  std::size_t bytes = 0;
  for (const Layer& l : model) {
    if (l.populated) bytes += 2 * l.geometry.planes() * l.tokens.size() * l.geometry.token_bytes();
  }
  return bytes;
}

// The geometry a tensor for `layer` is checked against: its own when populated (append only), else any other
// populated layer's.
const Geometry* reference_geometry(const Model& model, std::size_t layer, bool own) {
  if (own && layer < model.size() && model[layer].populated) return &model[layer].geometry;
  for (std::size_t i = 0; i < model.size(); ++i) {
    if (i != layer && model[i].populated) return &model[i].geometry;
  }
  return nullptr;
}

std::string dense(const Layer& layer, std::string Token::*part) {
  const std::size_t bytes = layer.geometry.token_bytes();
  std::string out;
  for (std::size_t p = 0; p < layer.geometry.planes(); ++p) {
    for (const Token& t : layer.tokens) out.append((t.*part), p * bytes, bytes);
  }
  return out;
}

std::string bytes_of(const Tensor& t) {
  const std::vector<std::byte> bytes = t.to_host_bytes();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void check_state(const KVCache& cache, const Model& model, const char* after) {
  check(cache.n_layers() == model.size(), "after {}: {} layers, model {}", after, cache.n_layers(), model.size());
  std::size_t longest = 0;
  for (std::size_t i = 0; i < model.size(); ++i) {
    const Layer& l = model[i];
    const Tensor keys = cache.keys(i);
    const Tensor values = cache.values(i);
    check(keys.defined() == l.populated && values.defined() == l.populated, "after {}: layer {} populated {}, model {}",
          after, i, keys.defined(), l.populated);
    std::vector<std::size_t> positions;
    for (const Token& t : l.tokens) positions.push_back(t.position);
    check(cache.positions(i) == positions, "after {}: layer {} positions differ from the model", after, i);
    const std::size_t first = l.tokens.empty() ? l.next_position : l.tokens.front().position;
    check(cache.first_position(i) == first, "after {}: layer {} first_position {}, model {}", after, i,
          cache.first_position(i), first);
    if (!l.populated) continue;
    const Geometry& g = l.geometry;
    const std::vector<std::size_t> dims{g.batch, g.heads, l.tokens.size(), g.head_dim};
    for (const Tensor* t : {&keys, &values}) {
      check(t->dims() == dims && t->dtype() == g.dtype, "after {}: layer {} is {} {}, model {} {}", after, i,
            t->shape().to_string(), dtype_name(t->dtype()), Shape(dims).to_string(), dtype_name(g.dtype));
    }
    check(bytes_of(keys) == dense(l, &Token::keys), "after {}: layer {} keys differ from the model", after, i);
    check(bytes_of(values) == dense(l, &Token::values), "after {}: layer {} values differ from the model", after, i);
    longest = std::max(longest, l.tokens.size());
  }
  check(cache.seq_len() == seq_len(model), "after {}: seq_len {}, model {}", after, cache.seq_len(), seq_len(model));
  check(cache.is_empty() == (first_populated(model) == nullptr), "after {}: is_empty {}", after, cache.is_empty());
  check(cache.memory_usage() == memory_usage(model), "after {}: memory_usage {}, model {}", after, cache.memory_usage(),
        memory_usage(model));
  check(cache.capacity() >= longest && cache.memory_reserved() >= cache.memory_usage(),
        "after {}: capacity {} for {} tokens, reserved {} for {} bytes", after, cache.capacity(), longest,
        cache.memory_reserved(), cache.memory_usage());
}

// ---- one call -----------------------------------------------------------------------------------------------------

// A call, what it must do, and the model after it when it succeeds.
struct Step {
  const char* name = "";
  std::function<std::optional<bool>(KVCache&)> call;  // the call's bool result, for those that return one
  Codes expected;                                     // empty: must succeed
  Codes tolerated;                                    // may throw one of these instead, changing nothing
  Model next;
  std::optional<bool> returns;
  std::function<void(const KVCache&)> post;  // further checks after success
};

void run(KVCache& cache, Model& model, Step step, std::size_t fault_after) {
  Backend& backend = backend_for(Device::cpu());
  if (fault_after != 0) step.tolerated.add(ErrorCode::OutOfMemory);
  std::optional<bool> result;
  backend.fail_allocation_after(fault_after);
  const std::optional<Error> got = attempt(step.name, [&] { result = step.call(cache); });
  backend.fail_allocation_after(0);
  if (!(got && step.tolerated.contains(got->code()))) {
    expect(got, step.expected, step.name);
    if (!got) {
      check(result == step.returns, "{}: returned {}, model {}", step.name, result.value_or(false),
            step.returns.value_or(false));
      model = std::move(step.next);
      if (step.post) step.post(cache);
    }
  }
  check_state(cache, model, step.name);
}

// ---- inputs -------------------------------------------------------------------------------------------------------

// Element bytes no earlier call produced (splitmix64 of a running counter).
std::string fresh_bytes(std::size_t n, std::uint64_t& serial) {
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    std::uint64_t z = (serial++ + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    for (std::size_t b = 0; b < 8 && i + b < n; ++b) out[i + b] = static_cast<char>(z >> (8 * b));
  }
  return out;
}

Tensor tensor_of(const std::string& bytes, Shape shape, DType dtype) {
  return Tensor::from_host_bytes(std::as_bytes(std::span(bytes.data(), bytes.size())), std::move(shape), dtype);
}

DType pick_float(FuzzedDataProvider& in) { return in.PickValueInArray({DType::F32, DType::F16, DType::BF16}); }

// What is wrong with the keys and values of an append or set_layer, if anything.
enum class Flaw { None, Geometry, DType, ValuesShape, ValuesDType, NonFloat, Rank, Undefined };

// Keys and values `[batch, heads, n, head_dim]` for `layer`, possibly flawed, with the codes the call must throw
// and the tokens it stores otherwise.
struct Input {
  Tensor keys;
  Tensor values;
  Geometry geometry;
  std::vector<Token> tokens;
  Codes expected;
  Codes tolerated;
};

Input make_input(FuzzedDataProvider& in, const Model& model, std::size_t layer, bool append, std::uint64_t& serial) {
  Input out;
  const Geometry* reference = reference_geometry(model, layer, append);
  if (reference != nullptr) {
    out.geometry = *reference;
  } else {
    // Batch, kv_heads and head_dim from 1, or (rarely) one of them 0.
    out.geometry = {in.ConsumeIntegralInRange<std::size_t>(1, 2), in.ConsumeIntegralInRange<std::size_t>(1, 3),
                    in.ConsumeIntegralInRange<std::size_t>(1, 8), pick_float(in)};
    const std::size_t zero = in.ConsumeIntegralInRange(0, 15);
    if (zero >= 13) (zero == 13 ? out.geometry.batch : zero == 14 ? out.geometry.heads : out.geometry.head_dim) = 0;
  }
  const Flaw flaw = in.ConsumeIntegralInRange(0, 15) < 9
                        ? Flaw::None
                        : in.PickValueInArray({Flaw::Geometry, Flaw::DType, Flaw::ValuesShape, Flaw::ValuesDType,
                                               Flaw::NonFloat, Flaw::Rank, Flaw::Undefined});
  Geometry& g = out.geometry;
  if (flaw == Flaw::Geometry) {
    const std::size_t which = in.ConsumeIntegralInRange(0, 2);
    (which == 0 ? g.batch : which == 1 ? g.heads : g.head_dim) += 1;
  } else if (flaw == Flaw::DType) {
    g.dtype = g.dtype == DType::F32 ? DType::BF16 : DType::F32;
  }
  const std::size_t length = layer < model.size() ? model[layer].tokens.size() : 0;
  std::size_t n =
      in.ConsumeBool() ? in.ConsumeIntegralInRange<std::size_t>(0, 3) : in.ConsumeIntegralInRange<std::size_t>(0, 40);
  if (append && length + n > kMaxTokens) n = kMaxTokens - std::min(length, kMaxTokens);
  if (!append) n = std::min(n, kMaxTokens);

  const DType stored = flaw == Flaw::NonFloat ? DType::I32 : g.dtype;
  const std::size_t token_bytes = g.head_dim * dtype_size(stored);
  const std::string keys = fresh_bytes(g.planes() * n * token_bytes, serial);
  const std::string values = fresh_bytes(g.planes() * n * token_bytes, serial);
  const Shape shape{g.batch, g.heads, n, g.head_dim};
  if (flaw != Flaw::Undefined) {
    out.keys = flaw == Flaw::Rank ? tensor_of(keys, {g.batch, g.heads, n * g.head_dim}, stored)
                                  : tensor_of(keys, shape, stored);
  }
  if (flaw == Flaw::ValuesShape) {
    out.values = tensor_of(fresh_bytes(g.planes() * (n + 1) * token_bytes, serial),
                           {g.batch, g.heads, n + 1, g.head_dim}, stored);
  } else if (flaw == Flaw::ValuesDType) {
    const DType other = stored == DType::F16 ? DType::BF16 : DType::F16;
    out.values = tensor_of(fresh_bytes(g.planes() * n * g.head_dim * 2, serial), shape, other);
  } else {
    out.values = flaw == Flaw::Rank ? tensor_of(values, {g.batch, g.heads, n * g.head_dim}, stored)
                                    : tensor_of(values, shape, stored);
  }

  if (layer >= model.size()) out.expected.add(ErrorCode::Hook);
  switch (flaw) {
    case Flaw::Undefined:
    case Flaw::NonFloat:
    case Flaw::ValuesDType:
      out.expected.add(ErrorCode::Config);
      break;
    case Flaw::Rank:
    case Flaw::ValuesShape:
      out.expected.add(ErrorCode::Shape);
      break;
    case Flaw::None:
    case Flaw::Geometry:
    case Flaw::DType:
      break;
  }
  if (reference != nullptr &&
      (g.batch != reference->batch || g.heads != reference->heads || g.head_dim != reference->head_dim)) {
    out.expected.add(ErrorCode::Shape);
  } else if (reference != nullptr && g.dtype != reference->dtype) {
    out.expected.add(ErrorCode::Config);
  }
  if (g.has_zero()) out.tolerated.add(ErrorCode::Shape);

  for (std::size_t t = 0; t < n && out.expected.empty(); ++t) {
    Token token;
    for (std::size_t p = 0; p < g.planes(); ++p) {
      token.keys.append(keys, (p * n + t) * token_bytes, token_bytes);
      token.values.append(values, (p * n + t) * token_bytes, token_bytes);
    }
    out.tokens.push_back(std::move(token));
  }
  return out;
}

std::size_t pick_layer(FuzzedDataProvider& in, const Model& model) {
  return in.ConsumeIntegralInRange<std::size_t>(0, model.size());  // model.size(): out of range
}

// A count, window or budget: mostly around `scale`, sometimes near SIZE_MAX.
std::size_t pick_size(FuzzedDataProvider& in, std::size_t scale) {
  if (in.ConsumeIntegralInRange(0, 15) == 15) {
    return std::numeric_limits<std::size_t>::max() - in.ConsumeIntegralInRange<std::size_t>(0, 3);
  }
  return in.ConsumeIntegralInRange<std::size_t>(0, scale + 2);
}

// ---- the calls ----------------------------------------------------------------------------------------------------

Step append_or_set(FuzzedDataProvider& in, const Model& model, bool append, std::uint64_t& serial) {
  const std::size_t layer = pick_layer(in, model);
  Input input = make_input(in, model, layer, append, serial);
  Step step{.name = append ? "append" : "set_layer", .expected = input.expected, .tolerated = input.tolerated};
  step.call = [append, layer, keys = input.keys, values = input.values](KVCache& cache) {
    append ? cache.append(layer, keys, values) : cache.set_layer(layer, keys, values);
    return std::optional<bool>();
  };
  if (!input.expected.empty()) return step;
  step.next = model;
  Layer& l = step.next[layer];
  if (!append || !l.populated) l = Layer{.populated = true, .geometry = input.geometry};
  for (Token& token : input.tokens) {
    token.position = l.next_position++;
    l.tokens.push_back(std::move(token));
  }
  return step;
}

// Keeps the last `keep` tokens of every populated layer.
Model keep_last(const Model& model, std::size_t keep) {
  Model next = model;
  for (Layer& l : next) {
    if (l.tokens.size() > keep) l.tokens.erase(l.tokens.begin(), l.tokens.end() - static_cast<std::ptrdiff_t>(keep));
  }
  return next;
}

Step trim_to(FuzzedDataProvider& in, const Model& model) {
  const std::size_t max = pick_size(in, seq_len(model));
  Step step{.name = "trim_to", .call = [max](KVCache& cache) { return std::optional(cache.trim_to(max)); }};
  if (!equal_lengths(model)) {
    step.expected = {ErrorCode::Shape};
  } else {
    step.returns = seq_len(model) > max;
    step.next = keep_last(model, max);
  }
  return step;
}

Step enforce_memory_limit(FuzzedDataProvider& in, const Model& model) {
  const std::size_t usage = memory_usage(model);
  const std::size_t budget = pick_size(in, 2 * usage);
  const EvictionPolicy policy = in.ConsumeBool() ? EvictionPolicy::ThreeQuarters : EvictionPolicy::UntilUnderBudget;
  Step step{
      .name = "enforce_memory_limit",
      .call = [budget, policy](KVCache& cache) { return std::optional(cache.enforce_memory_limit(budget, policy)); },
      .next = model,
      .returns = false};
  if (usage <= budget) {
    if (!equal_lengths(model)) step.tolerated = {ErrorCode::Shape};
  } else if (!equal_lengths(model)) {
    step.expected = {ErrorCode::Shape};
  } else {
    const std::size_t length = seq_len(model);
    const std::size_t keep =
        policy == EvictionPolicy::ThreeQuarters ? length * 3 / 4 : budget / (usage / length);  // longest fitting suffix
    if (policy == EvictionPolicy::UntilUnderBudget || keep != 0) {
      step.returns = true;
      step.next = keep_last(model, keep);
    }
  }
  return step;
}

// Sum without wrapping.
std::size_t saturating_add(std::size_t a, std::size_t b) {
  return a > std::numeric_limits<std::size_t>::max() - b ? std::numeric_limits<std::size_t>::max() : a + b;
}

// Keeps the tokens at `kept` (ascending indices) of every populated layer, row `row(l)` of `kept` for layer l.
Model keep_indices(const Model& model, const std::vector<std::vector<std::size_t>>& kept, bool per_layer) {
  Model next = model;
  for (std::size_t l = 0; l < next.size(); ++l) {
    if (!next[l].populated) continue;
    std::vector<Token> tokens;
    for (const std::size_t index : kept[per_layer ? l : 0]) tokens.push_back(model[l].tokens[index]);
    next[l].tokens = std::move(tokens);
  }
  return next;
}

Step evict_to_window(FuzzedDataProvider& in, const Model& model) {
  const std::size_t length = seq_len(model);
  const std::size_t sinks = pick_size(in, length / 2);
  const std::size_t window = pick_size(in, length);
  Step step{.name = "evict_to_window",
            .call = [sinks, window](KVCache& cache) { return std::optional(cache.evict_to_window(sinks, window)); }};
  if (!equal_lengths(model)) {
    step.expected = {ErrorCode::Shape};
  } else if (length <= saturating_add(sinks, window)) {
    step.returns = false;
    step.next = model;
  } else {
    std::vector<std::size_t> kept;
    for (std::size_t t = 0; t < length; ++t) {
      if (t < sinks || t >= length - window) kept.push_back(t);
    }
    step.returns = true;
    step.next = keep_indices(model, {kept}, false);
  }
  return step;
}

// A score: ties, signed zeros, NaN, infinities, subnormals and arbitrary bits.
float pick_score(FuzzedDataProvider& in) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  switch (in.ConsumeIntegralInRange(0, 11)) {
    case 0:
      return 0.0f;
    case 1:
      return -0.0f;
    case 2:
      return std::numeric_limits<float>::quiet_NaN();
    case 3:
      return -std::numeric_limits<float>::quiet_NaN();
    case 4:
      return kInf;
    case 5:
      return -kInf;
    case 6:
      return 1e-40f;
    case 7:
      return bits_float(in.ConsumeIntegral<std::uint32_t>());
    default:
      return static_cast<float>(in.ConsumeIntegralInRange(-3, 3)) * 0.5f;
  }
}

// The `heavy` best of `scores[0, candidates)` (weight descending, ties by lower index, NaN last), ascending.
std::vector<std::size_t> heavy_hitters(const float* scores, std::size_t candidates, std::size_t heavy) {
  std::vector<std::size_t> order(candidates);
  for (std::size_t i = 0; i < candidates; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return !std::isnan(scores[a]) && (std::isnan(scores[b]) || scores[a] > scores[b]);
  });
  order.resize(heavy);
  std::sort(order.begin(), order.end());
  return order;
}

Step evict_heavy_hitters(FuzzedDataProvider& in, const Model& model) {
  const std::size_t length = seq_len(model);
  const bool per_layer = in.ConsumeBool();
  const std::size_t rows = per_layer ? model.size() : 1;
  const std::size_t flaw = in.ConsumeIntegralInRange(0, 15);  // 12: other length, 13: rank 3, 14: I32, 15: undefined
  const DType dtype = pick_float(in);
  const std::size_t columns = flaw == 12 ? length + 1 : length;
  std::vector<float> scores(rows * columns);
  for (float& s : scores) s = stored_as(pick_score(in), dtype);
  const std::size_t heavy = pick_size(in, length / 2);
  const std::size_t window = pick_size(in, length / 2);

  Tensor tensor;
  if (flaw == 13) {
    tensor = Tensor::from_host(scores, {rows, 1, columns}, dtype);
  } else if (flaw == 14) {
    tensor = Tensor::from_host_i32(std::vector<std::int32_t>(scores.size()),
                                   per_layer ? Shape{rows, columns} : Shape{columns});
  } else if (flaw != 15) {
    tensor = Tensor::from_host(scores, per_layer ? Shape{rows, columns} : Shape{columns}, dtype);
  }
  Step step{.name = "evict_heavy_hitters", .call = [tensor, heavy, window](KVCache& cache) {
              return std::optional(cache.evict_heavy_hitters(tensor, heavy, window));
            }};
  Codes bad_scores;
  if (flaw == 12 || flaw == 13) bad_scores.add(ErrorCode::Shape);
  if (flaw == 14 || flaw == 15) bad_scores.add(ErrorCode::Config);
  if (!equal_lengths(model)) {
    step.expected = {ErrorCode::Shape};
  } else if (length <= saturating_add(heavy, window)) {
    step.tolerated = bad_scores;
    step.returns = false;
    step.next = model;
  } else if (!bad_scores.empty()) {
    step.expected = bad_scores;
  } else {
    std::vector<std::vector<std::size_t>> kept(rows);
    for (std::size_t r = 0; r < rows; ++r) {
      kept[r] = heavy_hitters(scores.data() + r * length, length - window, heavy);
      for (std::size_t t = length - window; t < length; ++t) kept[r].push_back(t);
    }
    step.returns = true;
    step.next = keep_indices(model, kept, per_layer);
  }
  return step;
}

Step reserve(FuzzedDataProvider& in, const Model& model) {
  const bool huge = in.ConsumeIntegralInRange(0, 7) == 7;
  const std::size_t tokens = huge ? pick_huge(in) : in.ConsumeIntegralInRange<std::size_t>(0, 2 * kMaxTokens);
  Step step{.name = "reserve", .call = [tokens](KVCache& cache) {
              cache.reserve(tokens);
              return std::optional<bool>();
            }};
  // A layer of zero-size geometry holds 0 bytes per token at any capacity, so only others must run out of memory.
  const Layer* first = first_populated(model);
  if (huge && first != nullptr && !first->geometry.has_zero()) {
    step.expected = {ErrorCode::OutOfMemory};
  } else {
    step.next = model;
    step.post = [tokens, populated = first_populated(model) != nullptr](const KVCache& cache) {
      check(!populated || cache.capacity() >= tokens, "reserve({}): capacity {}", tokens, cache.capacity());
    };
  }
  return step;
}

Step shrink_to_fit(const Model& model) {
  std::size_t longest = 0;
  for (const Layer& l : model) longest = std::max(longest, l.tokens.size());
  return {.name = "shrink_to_fit",
          .call =
              [](KVCache& cache) {
                cache.shrink_to_fit();
                return std::optional<bool>();
              },
          .next = model,
          .post =
              [longest](const KVCache& cache) {
                check(cache.capacity() == longest && cache.memory_reserved() == cache.memory_usage(),
                      "shrink_to_fit: capacity {} for {} tokens, reserved {} for {} bytes", cache.capacity(), longest,
                      cache.memory_reserved(), cache.memory_usage());
              }};
}

Step clear(const Model& model) {
  return {.name = "clear",
          .call =
              [](KVCache& cache) {
                cache.clear();
                return std::optional<bool>();
              },
          .next = Model(model.size())};
}

void check_out_of_range(const KVCache& cache) {
  const std::size_t layer = cache.n_layers();
  expect(attempt("keys", [&] { cache.keys(layer); }), {ErrorCode::Hook}, "keys of a layer out of range");
  expect(attempt("values", [&] { cache.values(layer); }), {ErrorCode::Hook}, "values of a layer out of range");
  expect(attempt("positions", [&] { cache.positions(layer); }), {ErrorCode::Hook}, "positions out of range");
  expect(attempt("first_position", [&] { cache.first_position(layer); }), {ErrorCode::Hook},
         "first_position out of range");
}

}  // namespace
}  // namespace micache::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace micache;
  using namespace micache::fuzz;
  FuzzedDataProvider in(data, size);
  const std::size_t n_layers = in.ConsumeIntegralInRange<std::size_t>(1, 4);
  KVCache cache(n_layers);
  Model model(n_layers);
  std::uint64_t serial = 0;
  for (std::size_t steps = 0; steps < kMaxSteps && in.remaining_bytes() > 0; ++steps) {
    const std::size_t fault_after = in.ConsumeIntegralInRange(0, 15) == 15 ? in.ConsumeIntegralInRange(1, 3) : 0;
    switch (in.ConsumeIntegralInRange(0, 11)) {
      case 0:
      case 1:
        run(cache, model, append_or_set(in, model, true, serial), fault_after);
        break;
      case 2:
        run(cache, model, append_or_set(in, model, false, serial), fault_after);
        break;
      case 3:
        run(cache, model, trim_to(in, model), fault_after);
        break;
      case 4:
        run(cache, model, enforce_memory_limit(in, model), fault_after);
        break;
      case 5:
        run(cache, model, evict_to_window(in, model), fault_after);
        break;
      case 6:
      case 7:
        run(cache, model, evict_heavy_hitters(in, model), fault_after);
        break;
      case 8:
        run(cache, model, reserve(in, model), fault_after);
        break;
      case 9:
        run(cache, model, shrink_to_fit(model), fault_after);
        break;
      case 10:
        run(cache, model, clear(model), fault_after);
        break;
      default:
        check_out_of_range(cache);
        break;
    }
  }
  return 0;
}
