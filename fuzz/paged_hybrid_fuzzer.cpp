// Fuzz target: PagedKvCache with layer kinds (hybrid models), differential. Every call goes to the hybrid cache H and
// to a reference R of the same geometry whose layers are all full attention, with a pool that never runs out; R is
// the plain cache that fuzz_paged_kv_cache models in full, so H is checked against it rather than against a model.
//
// The config comes first: page_size 1, 2, 4 or 8, 2..4 layers each full, sliding(1..12) or sinks_and_window(1..4,
// 1..12), one at least full; 1..2 kv heads, head_dim 1..4, F32, NHD or HND, 1..48 pages (1 with a window layer, and
// sometimes a layer_kinds list of the wrong length or sinks without a window: validation must fail with Config), 2..8
// sequences, sometimes a max_sequence_len of 1..64. R has the same fields but no layer kinds, H's sequence_len()
// as max_sequence_len (so the same page-table rows) and max_sequences x row_capacity() + 1 pages. Then up to
// kMaxCalls calls, each to both caches: add_sequence(), add_sequence(prompt, salt) on H (prefix caching is off with
// window layers: it must hit nothing; R gets add_sequence()), fork, release, begin_step (1..4 ids, 0..10 new tokens
// each, duplicate, released and unknown ids, sometimes token ids or a mismatched count) and after a successful one a
// write of every layer (token t's key element e is float(stamp x 8 + e), its value the negation, a stamp per token
// and layer), trim_to, evict_to_window, and a state() + restore() round trip of H.
//
// The target keeps one thing of its own: per sequence and layer group, whether H holds each token. A step of a
// sequence of L tokens clears its window groups' whole columns of tokens at least `sinks` and below L + 1 - window
// (L - window when it gets no new token); a compaction keeps the flags of the tokens it keeps, and a dropped token it
// packs beside held ones becomes stale: H takes it for held, its bytes unspecified (the limitation PagedKvCache's
// header documents; gathers skip such tokens). A call on H must throw exactly the error the header documents
// when its arguments are wrong (Shape, Hook, Config, in the documented order), may throw OutOfMemory only when the
// pages it could need exceed the free and cached ones, and a compaction must throw Config exactly when a token it
// keeps at index i was dropped by a window group whose next query attends i; a throwing call changes
// nothing (H.state() before and after). R then gets the call when H succeeded or failed for its arguments alone.
//
// After every call: per sequence, length and positions as R's; each layer's pages_of naming the null page
// (config.pool_pages()) exactly in the columns whose tokens H no longer holds, and never in a full layer; no page in
// two groups' lists or twice in one; the block tables as pages_of; H holding every token the next step's first query
// attends; gather bit for bit as R's on the tokens H holds, zeros in the null columns (stale tokens unchecked);
// sequence_stats from the pages; and for the pool, state().references as the page lists' counts, pool_stats as
// references, free and cached lists (used + cached + free = total = pool_pages()), tokens as the held pages' fills,
// memory_usage, prefix_stats (nothing named or hit with window layers), device_accounting as sequence_stats and
// pool_stats. After a step: the plan's kv_indptr, kv_last_page_len and qo_indptr as R's, each layer's kv_indices as its
// pages_of and slot_mapping as the slots of its new tokens in its group's pages, and H holding every token the step's
// decode attention reads (from each sequence's last token: one more than a query at the new length attends when the
// sequence got no new token).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "fuzz/fuzz_support.hpp"
#include "fuzz/paged_support.hpp"
#include "micache/micache.hpp"

namespace micache::fuzz {
namespace {

constexpr std::size_t kMaxCalls = 48;
constexpr std::size_t kElements = 8;  // kv_heads x head_dim is at most 8: a stamp's elements

std::uint64_t raw(SequenceId id) { return static_cast<std::uint64_t>(id); }

float key_of(std::uint32_t stamp, std::size_t e) { return static_cast<float>(stamp * kElements + e); }

// Per token of a sequence, what a layer group of H has of it. H knows what a window group dropped only by whole
// columns (the null page): a compaction that packs a dropped token into a column beside held ones makes H take it for
// held, its bytes unspecified (stale). That is the cache's documented limitation (PagedKvCache, "Hybrid models"); the
// target follows it so that it checks everything else.
enum : std::uint8_t { kDropped = 0, kHeld = 1, kStale = 2 };
using Holding = std::vector<std::uint8_t>;

// What the target keeps besides the two caches.
struct Harness {
  PagedKvConfig config;  // H's
  PagedLayerGroups groups;
  std::vector<std::size_t> group_layer;  // per group: its first layer
  std::size_t page_size = 1;
  std::size_t pool_pages = 0;
  std::int32_t null_page = -1;  // pool_pages with window layers, else -1
  std::size_t sequence_len = 0;
  std::size_t h_slots = 0, r_slots = 0;
  // Per live sequence, per layer group, per token: what H has of it (kDropped, kHeld, kStale).
  std::map<std::uint64_t, std::vector<Holding>> held;
  std::vector<std::uint64_t> released;
  std::uint64_t next_id = 0;
  std::uint32_t stamp = 0;
  std::size_t lookup_tokens = 0;

  bool windows() const { return null_page >= 0; }
  bool known(std::uint64_t id) const { return held.count(id) == 1; }
  std::size_t length(std::uint64_t id) const { return held.at(id)[0].size(); }
  std::size_t columns(std::size_t len) const { return (len + page_size - 1) / page_size; }
  std::size_t fill(std::size_t len, std::size_t column) const { return std::min(page_size, len - column * page_size); }
};

// Whether the next step's first query attends token t in a layer of `kind`: token `length`, or the last token for a
// step that adds none (the earlier of the two, so the wider reach back).
bool attended(const PagedLayerKind& kind, std::size_t t, std::size_t length) {
  return kind.is_full() || t < kind.sinks || t + kind.window >= length;
}

// ---- the checks after every call ----------------------------------------------------------------------------------

void check_gather(const PagedKvCache& h, const PagedKvCache& r, const Harness& hs, std::uint64_t id,
                  const std::vector<std::vector<std::int32_t>>& pages, const char* after) {
  const std::vector<Holding>& held = hs.held.at(id);
  const std::size_t heads = hs.config.kv_heads, dim = hs.config.head_dim, len = held[0].size();
  const std::vector<std::size_t> dims{1, heads, len, dim};
  for (std::size_t l = 0; l < hs.config.n_layers; ++l) {
    const std::size_t g = hs.groups.layer_group[l];
    const PagedKv got = h.gather(SequenceId{id}, l);
    const PagedKv want = r.gather(SequenceId{id}, l);
    check(got.keys.dims() == dims && got.values.dims() == dims, "after {}: gather({}, {}) is {}, expected {}", after,
          id, l, got.keys.shape().to_string(), Shape(dims).to_string());
    const std::vector<float> keys = got.keys.to_host_f32(), values = got.values.to_host_f32();
    const std::vector<float> ref_keys = want.keys.to_host_f32(), ref_values = want.values.to_host_f32();
    for (std::size_t t = 0; t < len; ++t) {
      const bool null = pages[g][t / hs.page_size] == hs.null_page;
      if (held[g][t] == kStale || (held[g][t] == kDropped && !null)) continue;
      for (std::size_t x = 0; x < heads * dim; ++x) {
        const std::size_t at = (x / dim * len + t) * dim + x % dim;
        if (held[g][t] == kHeld) {
          check(same_float(keys[at], ref_keys[at]) && same_float(values[at], ref_values[at]),
                "after {}: gather({}, {}) token {} element {}: key {} value {}, the reference's {} {}", after, id, l, t,
                x, keys[at], values[at], ref_keys[at], ref_values[at]);
        } else {
          check(float_bits(keys[at]) == 0 && float_bits(values[at]) == 0,
                "after {}: gather({}, {}) token {} element {} of the null page: key {} value {}, not zeros", after, id,
                l, t, x, keys[at], values[at]);
        }
      }
    }
  }
}

void check_all(const PagedKvCache& h, const PagedKvCache& r, const Harness& hs, const char* after) {
  const PagedKvConfig& c = hs.config;
  const std::size_t ps = hs.page_size, groups = hs.groups.groups(), pool_pages = hs.pool_pages;
  const std::size_t page_bytes = c.page_bytes();
  const PagedPoolStats stats = h.pool_stats();
  check(stats.pages_total == pool_pages && stats.pages_used + stats.pages_cached + stats.pages_free == pool_pages,
        "after {}: pool total {} (pool_pages {}), used {} + cached {} + free {}", after, stats.pages_total, pool_pages,
        stats.pages_used, stats.pages_cached, stats.pages_free);
  check(stats.bytes_total == pool_pages * page_bytes && stats.bytes_used == stats.pages_used * page_bytes &&
            stats.bytes_cached == stats.pages_cached * page_bytes && stats.bytes_free == stats.pages_free * page_bytes,
        "after {}: pool bytes differ from pages x {}", after, page_bytes);
  const PagedKvState st = h.state();
  check(st.references.size() == pool_pages && st.free_pages.size() == stats.pages_free &&
            st.cached_pages.size() == stats.pages_cached,
        "after {}: state has {} references, {} free and {} cached pages; pool_stats {} {} {}", after,
        st.references.size(), st.free_pages.size(), st.cached_pages.size(), pool_pages, stats.pages_free,
        stats.pages_cached);
  check(h.num_sequences() == hs.held.size() && r.num_sequences() == hs.held.size(),
        "after {}: {} sequences, the reference {}, expected {}", after, h.num_sequences(), r.num_sequences(),
        hs.held.size());

  std::vector<std::uint32_t> refs(pool_pages, 0);
  std::vector<std::size_t> owner(pool_pages, groups);  // the group whose lists hold the page
  std::vector<std::size_t> fills(pool_pages, 0);
  std::vector<std::vector<std::int32_t>> tables;
  for (std::size_t g = 0; g < groups; ++g) tables.push_back(h.block_table(hs.group_layer[g]).to_host_i32());
  const std::size_t capacity = c.row_capacity();
  std::vector<SequenceId> ids;
  std::set<std::size_t> rows;
  for (const auto& [id, held] : hs.held) {
    const SequenceId sid{id};
    ids.push_back(sid);
    const std::size_t len = held[0].size();
    check(h.length(sid) == len && r.length(sid) == len, "after {}: length({}) {}, the reference {}, expected {}", after,
          id, h.length(sid), r.length(sid), len);
    check(h.positions(sid) == r.positions(sid), "after {}: positions({}) differ from the reference's", after, id);
    const std::size_t row = h.row_of(sid);
    check(row < c.max_sequences && rows.insert(row).second, "after {}: row {} of {} out of range or taken", after, row,
          id);
    std::vector<std::vector<std::int32_t>> pages(groups);
    std::size_t held_pages = 0, held_slots = 0;
    for (std::size_t g = 0; g < groups; ++g) {
      const PagedLayerKind& kind = hs.groups.group_kinds[g];
      pages[g] = h.pages_of(sid, hs.group_layer[g]);
      check(pages[g].size() == hs.columns(len), "after {}: pages_of({}, {}) has {} pages for {} tokens", after, id,
            hs.group_layer[g], pages[g].size(), len);
      std::set<std::int32_t> seen;
      for (std::size_t j = 0; j < pages[g].size(); ++j) {
        const std::int32_t p = pages[g][j];
        check(tables[g][row * capacity + j] == p, "after {}: block table of group {} row {} column {} is {}, page {}",
              after, g, row, j, tables[g][row * capacity + j], p);
        const auto first = held[g].begin() + static_cast<std::ptrdiff_t>(j * ps);
        const bool any = std::any_of(first, first + static_cast<std::ptrdiff_t>(hs.fill(len, j)),
                                     [](std::uint8_t x) { return x != kDropped; });
        if (p == hs.null_page) {
          check(!kind.is_full() && !any,
                "after {}: sequence {} of {} tokens: group {} (window {}) names the null page in column {}", after, id,
                len, g, kind.window, j);
          continue;
        }
        check(any, "after {}: sequence {} group {} (window {}, sinks {}) holds page {} in column {}, which it dropped",
              after, id, g, kind.window, kind.sinks, p, j);
        check(p >= 0 && static_cast<std::size_t>(p) < pool_pages, "after {}: sequence {} holds page {} of {}", after,
              id, p, pool_pages);
        const auto page = static_cast<std::size_t>(p);
        check(seen.insert(p).second, "after {}: sequence {} group {} holds page {} twice", after, id, g, p);
        check(owner[page] == groups || owner[page] == g, "after {}: page {} is in the lists of groups {} and {}", after,
              p, owner[page], g);
        check(fills[page] == 0 || fills[page] == hs.fill(len, j),
              "after {}: page {} holds {} tokens for one holder, {} for sequence {}", after, p, fills[page],
              hs.fill(len, j), id);
        owner[page] = g;
        fills[page] = hs.fill(len, j);
        ++refs[page];
        ++held_pages;
        held_slots += hs.fill(len, j);
      }
      for (std::size_t t = 0; t < len; ++t) {
        check(held[g][t] || !attended(kind, t, len),
              "after {}: sequence {} of {} tokens: group {} (window {}, sinks {}) dropped token {}, which a query at "
              "{} attends",
              after, id, len, g, kind.window, kind.sinks, t, len);
      }
    }
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      check(h.pages_of(sid, l) == pages[hs.groups.layer_group[l]], "after {}: pages_of({}, {}) differ from its group's",
            after, id, l);
    }
    const PagedSequenceStats s = h.sequence_stats(sid);
    check(s.tokens == len && s.pages == held_pages && s.bytes == held_pages * page_bytes &&
              s.slack == held_pages * ps - held_slots,
          "after {}: sequence_stats({}) = ({}, {}, {}, {}), expected ({}, {}, {}, {})", after, id, s.tokens, s.pages,
          s.bytes, s.slack, len, held_pages, held_pages * page_bytes, held_pages * ps - held_slots);
    check_gather(h, r, hs, id, pages, after);
  }

  std::size_t used = 0, shared = 0, tokens = 0;
  for (std::size_t p = 0; p < pool_pages; ++p) {
    check(refs[p] == st.references[p], "after {}: page {} is in {} page lists, its reference count is {}", after, p,
          refs[p], st.references[p]);
    used += refs[p] > 0 ? 1 : 0;
    shared += refs[p] > 1 ? 1 : 0;
    tokens += fills[p];
  }
  check(stats.pages_used == used && stats.pages_shared == shared && stats.tokens == tokens,
        "after {}: pool used {} shared {} tokens {}, the page lists {} {} {}", after, stats.pages_used,
        stats.pages_shared, stats.tokens, used, shared, tokens);
  check(h.memory_usage() == tokens * c.slot_bytes(), "after {}: memory_usage {}, expected {} tokens x {}", after,
        h.memory_usage(), tokens, c.slot_bytes());
  const PrefixCacheStats prefix = h.prefix_stats();
  check(prefix.lookup_tokens == hs.lookup_tokens && prefix.hit_tokens == 0 && prefix.hit_pages == 0,
        "after {}: prefix lookups {} hits {} hit pages {}, expected {} 0 0", after, prefix.lookup_tokens,
        prefix.hit_tokens, prefix.hit_pages, hs.lookup_tokens);
  check(!hs.windows() || (prefix.named_pages == 0 && prefix.evictions == 0),
        "after {}: {} named pages and {} evictions with window layers", after, prefix.named_pages, prefix.evictions);

  check_device_accounting(h, ids, after);
}

// ---- the calls ----------------------------------------------------------------------------------------------------

// Runs `call` on H: it must throw `expected` when set, else succeed or (when `may_run_out`) throw OutOfMemory; a
// throwing call must leave H.state() as it was. Returns the error it threw.
template <class Call>
std::optional<Error> on_h(const PagedKvCache& h, const char* what, std::optional<ErrorCode> expected, bool may_run_out,
                          Call&& call) {
  const PagedKvState before = h.state();
  const std::optional<Error> got = attempt(what, std::forward<Call>(call));
  if (expected) {
    fuzz::expect(got, {*expected}, what);
  } else {
    allow(got, may_run_out ? Codes{ErrorCode::OutOfMemory} : Codes{}, what);
  }
  if (got)
    check(h.state() == before, "{}: threw {} ({}) and changed the state", what, to_string(got->code()), got->what());
  return got;
}

// Runs `call` on R: it must throw `expected` when set, else succeed.
template <class Call>
void on_r(const char* what, std::optional<ErrorCode> expected, Call&& call) {
  const std::optional<Error> got = attempt(what, std::forward<Call>(call));
  if (expected) {
    fuzz::expect(got, {*expected}, what);
  } else {
    allow(got, {}, what);
  }
}

// A live id mostly; sometimes one never added, or a released one.
std::uint64_t pick_id(FuzzedDataProvider& in, const Harness& hs) {
  const std::size_t live = hs.held.size();
  const std::size_t c = in.ConsumeIntegralInRange<std::size_t>(0, live + 1);
  if (c < live) return std::next(hs.held.begin(), static_cast<std::ptrdiff_t>(c))->first;
  if (c == live + 1 && !hs.released.empty()) {
    return hs.released[in.ConsumeIntegralInRange<std::size_t>(0, hs.released.size() - 1)];
  }
  return hs.next_id + (c - live);
}

// A count, window or budget: mostly up to `scale` + 2, sometimes near SIZE_MAX.
std::size_t pick_size(FuzzedDataProvider& in, std::size_t scale) {
  if (in.ConsumeIntegralInRange(0, 15) == 15) {
    return std::numeric_limits<std::size_t>::max() - in.ConsumeIntegralInRange<std::size_t>(0, 3);
  }
  return in.ConsumeIntegralInRange<std::size_t>(0, scale + 2);
}

std::optional<ErrorCode> full_error(const Harness& hs) {
  return hs.held.size() == hs.config.max_sequences ? std::optional{ErrorCode::OutOfMemory} : std::nullopt;
}

void adopt(Harness& hs, SequenceId h_id, SequenceId r_id, std::vector<Holding> held, const char* what) {
  check(raw(h_id) == hs.next_id && raw(r_id) == hs.next_id, "{}: id {}, the reference {}, expected {}", what, raw(h_id),
        raw(r_id), hs.next_id);
  hs.held[hs.next_id++] = std::move(held);
}

void add_plain(PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  SequenceId h_id{}, r_id{};
  if (on_h(h, "add_sequence()", full_error(hs), false, [&] { h_id = h.add_sequence(); })) return;
  on_r("add_sequence() on the reference", std::nullopt, [&] { r_id = r.add_sequence(); });
  adopt(hs, h_id, r_id, std::vector<Holding>(hs.groups.groups()), "add_sequence()");
}

// With window layers H shares nothing: the prompt's sequence starts empty, as R's add_sequence(). Without them H
// would share R's pages' names but not their bytes (R's pool keeps what H's evicts), so H gets add_sequence() too.
void add_prompt(FuzzedDataProvider& in, PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  std::vector<std::int32_t> prompt(in.ConsumeIntegralInRange<std::size_t>(0, 12));
  for (std::int32_t& t : prompt) t = in.ConsumeIntegralInRange<std::int32_t>(0, 3);
  const std::uint64_t salt = in.ConsumeIntegralInRange<std::uint64_t>(0, 1);
  if (!hs.windows()) {
    add_plain(h, r, hs);
    return;
  }
  PrefixHit hit;
  SequenceId r_id{};
  if (on_h(h, "add_sequence(prompt)", full_error(hs), false, [&] { hit = h.add_sequence(prompt, salt); })) return;
  check(hit.cached_tokens == 0, "add_sequence(prompt of {}): cached_tokens {} with window layers", prompt.size(),
        hit.cached_tokens);
  on_r("add_sequence() on the reference", std::nullopt, [&] { r_id = r.add_sequence(); });
  hs.lookup_tokens += prompt.size();
  adopt(hs, hit.id, r_id, std::vector<Holding>(hs.groups.groups()), "add_sequence(prompt)");
}

void fork(FuzzedDataProvider& in, PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  const std::uint64_t parent = pick_id(in, hs);
  const std::optional<ErrorCode> expected = !hs.known(parent) ? std::optional{ErrorCode::Hook} : full_error(hs);
  SequenceId h_id{}, r_id{};
  if (on_h(h, "fork", expected, false, [&] { h_id = h.fork(SequenceId{parent}); })) {
    on_r("fork on the reference", expected, [&] { r.fork(SequenceId{parent}); });
    return;
  }
  on_r("fork on the reference", std::nullopt, [&] { r_id = r.fork(SequenceId{parent}); });
  adopt(hs, h_id, r_id, hs.held.at(parent), "fork");
}

void release(FuzzedDataProvider& in, PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  const std::uint64_t id = pick_id(in, hs);
  const std::optional<ErrorCode> expected = hs.known(id) ? std::nullopt : std::optional{ErrorCode::Hook};
  on_h(h, "release", expected, false, [&] { h.release(SequenceId{id}); });
  on_r("release on the reference", expected, [&] { r.release(SequenceId{id}); });
  if (expected) return;
  hs.held.erase(id);
  hs.released.push_back(id);
}

struct Step {
  std::vector<SequenceId> ids;
  std::vector<std::size_t> counts;
  std::vector<std::int32_t> token_ids;
};

// The error begin_step throws before it counts pages, in a cache of `slots` slots (header order: the spans, then
// each id, then each entry's growth, then the token ids); none when the arguments are right.
std::optional<ErrorCode> step_error(const Harness& hs, const Step& s, std::size_t slots) {
  if (s.ids.size() != s.counts.size()) return ErrorCode::Shape;
  std::set<std::uint64_t> listed;
  for (const SequenceId id : s.ids) {
    if (!hs.known(raw(id))) return ErrorCode::Hook;
    if (!listed.insert(raw(id)).second) return ErrorCode::Config;
  }
  std::size_t total = 0;
  for (std::size_t i = 0; i < s.ids.size(); ++i) {
    const std::size_t len = hs.length(raw(s.ids[i])), n = s.counts[i];
    if (n > slots - len) return ErrorCode::OutOfMemory;
    if (n > hs.sequence_len - std::min(len, hs.sequence_len)) return ErrorCode::Config;
    total += n;
  }
  if (!s.token_ids.empty() && s.token_ids.size() != total) return ErrorCode::Shape;
  return std::nullopt;
}

void write_layers(PagedKvCache& h, PagedKvCache& r, Harness& hs, const PagedStepPlan& hp, const PagedStepPlan& rp) {
  const Shape shape{hp.total_new, hs.config.kv_heads, hs.config.head_dim};
  const std::size_t elements = hs.config.kv_heads * hs.config.head_dim;
  for (std::size_t l = 0; l < hs.config.n_layers; ++l) {
    std::vector<float> keys, values;
    for (std::size_t t = 0; t < hp.total_new; ++t) {
      ++hs.stamp;
      for (std::size_t e = 0; e < elements; ++e) {
        keys.push_back(key_of(hs.stamp, e));
        values.push_back(-key_of(hs.stamp, e));
      }
    }
    const Tensor k = Tensor::from_host(keys, shape, DType::F32);
    const Tensor v = Tensor::from_host(values, shape, DType::F32);
    on_h(h, "write", std::nullopt, false, [&] { h.write(l, hp, k, v); });
    on_r("write on the reference", std::nullopt, [&] { r.write(l, rp, k, v); });
  }
}

// The plan of a step that succeeded, against R's and H's page lists after it.
void check_plan(const PagedKvCache& h, const Harness& hs, const Step& s, const std::vector<std::size_t>& old_lengths,
                const PagedStepPlan& hp, const PagedStepPlan& rp) {
  check(hp.batch == s.ids.size() && hp.total_new == rp.total_new && hp.total_pages == rp.total_pages &&
            hp.groups == hs.groups.groups() && rp.groups == 1,
        "begin_step: plan batch {} total_new {} total_pages {} groups {}, the reference's {} {} {} {}", hp.batch,
        hp.total_new, hp.total_pages, hp.groups, rp.batch, rp.total_new, rp.total_pages, rp.groups);
  check(hp.kv_indptr.to_host_i32() == rp.kv_indptr.to_host_i32() &&
            hp.kv_last_page_len.to_host_i32() == rp.kv_last_page_len.to_host_i32() &&
            hp.qo_indptr.to_host_i32() == rp.qo_indptr.to_host_i32(),
        "begin_step: kv_indptr, kv_last_page_len or qo_indptr differ from the reference's");
  const std::size_t ps = hs.page_size;
  for (std::size_t l = 0; l < hs.config.n_layers; ++l) {
    std::vector<std::int32_t> indices;
    std::vector<std::int64_t> slots;
    for (std::size_t i = 0; i < s.ids.size(); ++i) {
      const std::vector<std::int32_t> pages = h.pages_of(s.ids[i], l);
      indices.insert(indices.end(), pages.begin(), pages.end());
      for (std::size_t t = old_lengths[i]; t < old_lengths[i] + s.counts[i]; ++t) {
        check(pages[t / ps] != hs.null_page, "begin_step: new token {} of sequence {} is in the null page of layer {}",
              t, raw(s.ids[i]), l);
        slots.push_back(static_cast<std::int64_t>(static_cast<std::size_t>(pages[t / ps]) * ps + t % ps));
      }
    }
    check(h.kv_indices(hp, l).to_host_i32() == indices, "begin_step: kv_indices(plan, {}) differ from its pages_of", l);
    check(h.slot_mapping(hp, l).to_host_i64() == slots,
          "begin_step: slot_mapping(plan, {}) differs from its new tokens' slots in its group's pages", l);
  }
}

void begin_step(FuzzedDataProvider& in, PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  Step s;
  const std::size_t batch = in.ConsumeIntegralInRange<std::size_t>(1, 4);
  for (std::size_t i = 0; i < batch; ++i) {
    s.ids.push_back(SequenceId{pick_id(in, hs)});
    s.counts.push_back(in.ConsumeIntegralInRange<std::size_t>(0, 10));
  }
  const int flaw = in.ConsumeIntegralInRange(0, 15);  // 14: one count too many; 15: one token id too many
  if (flaw == 14) s.counts.push_back(0);
  if (in.ConsumeBool() || flaw == 15) {
    std::size_t total = 0;
    for (const std::size_t n : s.counts) total += n;
    s.token_ids.assign(total + (flaw == 15 ? 1 : 0), 0);
    for (std::int32_t& t : s.token_ids) t = in.ConsumeIntegralInRange<std::int32_t>(0, 3);
  }
  const std::optional<ErrorCode> h_error = step_error(hs, s, hs.h_slots);
  std::vector<std::size_t> old_lengths;
  std::size_t need = 0;  // the most fresh pages the step can take: new columns and copies on write, every group
  if (!h_error) {
    for (std::size_t i = 0; i < batch; ++i) {
      const std::size_t len = hs.length(raw(s.ids[i])), n = s.counts[i];
      old_lengths.push_back(len);
      need += hs.groups.groups() * (hs.columns(len + n) - hs.columns(len) + (n > 0 && len % hs.page_size ? 1 : 0));
    }
  }
  const PagedPoolStats pool = h.pool_stats();
  PagedStepPlan hp, rp;
  if (const std::optional<Error> got =
          on_h(h, "begin_step", h_error, true, [&] { hp = h.begin_step(s.ids, s.counts, s.token_ids); })) {
    if (const std::optional<ErrorCode> r_error = step_error(hs, s, hs.r_slots)) {
      on_r("begin_step on the reference", r_error, [&] { r.begin_step(s.ids, s.counts, s.token_ids); });
    } else if (!h_error) {
      check(need > pool.pages_free + pool.pages_cached,
            "begin_step: OutOfMemory ({}) needing at most {} pages, {} free and {} cached", got->what(), need,
            pool.pages_free, pool.pages_cached);
    }
    return;
  }
  on_r("begin_step on the reference", std::nullopt, [&] { rp = r.begin_step(s.ids, s.counts, s.token_ids); });
  for (std::size_t i = 0; i < batch; ++i) {
    std::vector<Holding>& held = hs.held.at(raw(s.ids[i]));
    const std::size_t len = old_lengths[i];
    for (std::size_t g = 0; g < held.size(); ++g) {
      const PagedLayerKind& kind = hs.groups.group_kinds[g];
      // The step's first query: token len, or the last token when the sequence gets none.
      const std::size_t first_query = s.counts[i] > 0 ? len : len - 1;
      if (!kind.is_full() && len > 0 && first_query + 1 > kind.window) {
        const std::size_t first = (kind.sinks + hs.page_size - 1) / hs.page_size;
        const std::size_t end = (first_query + 1 - kind.window) / hs.page_size;
        for (std::size_t t = first * hs.page_size; t < end * hs.page_size; ++t) held[g][t] = kDropped;
      }
      held[g].resize(len + s.counts[i], kHeld);
      // The step's decode attention reads each of its sequences from its last token (decode_attention).
      const std::size_t now = held[g].size();
      for (std::size_t t = 0; t < now; ++t) {
        check(held[g][t] || !(t < kind.sinks || t + kind.window >= now),
              "begin_step: sequence {} of {} tokens ({} new): group {} (window {}, sinks {}) dropped token {}, which "
              "the step's decode attention from token {} reads",
              raw(s.ids[i]), now, s.counts[i], g, kind.window, kind.sinks, t, now - 1);
      }
    }
  }
  check_plan(h, hs, s, old_lengths, hp, rp);
  write_layers(h, r, hs, hp, rp);
}

std::size_t saturating_add(std::size_t a, std::size_t b) {
  return a > std::numeric_limits<std::size_t>::max() - b ? std::numeric_limits<std::size_t>::max() : a + b;
}

// Keeps `kept` (ascending indices) of sequence `id` in both caches through `call_h` and `call_r`, which return
// whether they evicted.
template <class CallH, class CallR>
void compact(PagedKvCache& h, Harness& hs, std::uint64_t id, const std::vector<std::size_t>& kept, const char* what,
             CallH&& call_h, CallR&& call_r) {
  bool h_evicted = false, r_evicted = false;
  if (!hs.known(id)) {
    on_h(h, what, ErrorCode::Hook, false, [&] { h_evicted = call_h(); });
    on_r(what, ErrorCode::Hook, [&] { r_evicted = call_r(); });
    return;
  }
  std::vector<Holding>& held = hs.held.at(id);
  const std::size_t len = held[0].size();
  if (kept.size() == len) {
    on_h(h, what, std::nullopt, false, [&] { h_evicted = call_h(); });
    on_r(what, std::nullopt, [&] { r_evicted = call_r(); });
    check(!h_evicted && !r_evicted, "{}: returned true keeping all {} tokens", what, len);
    return;
  }
  bool refused = false;
  for (std::size_t g = 0; g < held.size(); ++g) {
    for (std::size_t i = 0; i < kept.size(); ++i) {
      refused = refused || (!held[g][kept[i]] && attended(hs.groups.group_kinds[g], i, kept.size()));
    }
  }
  const std::size_t need = hs.groups.groups() * hs.columns(kept.size());
  const PagedPoolStats pool = h.pool_stats();
  const std::optional<ErrorCode> expected = refused ? std::optional{ErrorCode::Config} : std::nullopt;
  if (const std::optional<Error> got = on_h(h, what, expected, true, [&] { h_evicted = call_h(); })) {
    check(refused || need > pool.pages_free + pool.pages_cached,
          "{}: OutOfMemory ({}) needing at most {} pages, {} free and {} cached", what, got->what(), need,
          pool.pages_free, pool.pages_cached);
    return;
  }
  on_r(what, std::nullopt, [&] { r_evicted = call_r(); });
  check(h_evicted && r_evicted, "{}: returned {}, the reference {}, evicting {} of {} tokens", what, h_evicted,
        r_evicted, len - kept.size(), len);
  for (std::size_t g = 0; g < held.size(); ++g) {
    Holding next;
    for (const std::size_t t : kept) next.push_back(held[g][t]);
    for (std::size_t j = 0; j < hs.columns(next.size()); ++j) {  // a column H holds any token of: H holds all
      const auto first = next.begin() + static_cast<std::ptrdiff_t>(j * hs.page_size);
      const auto last = first + static_cast<std::ptrdiff_t>(hs.fill(next.size(), j));
      if (std::any_of(first, last, [](std::uint8_t x) { return x != kDropped; })) {
        std::replace(first, last, std::uint8_t{kDropped}, std::uint8_t{kStale});
      }
    }
    held[g] = std::move(next);
  }
}

std::vector<std::size_t> keep_range(std::size_t begin, std::size_t end) {
  std::vector<std::size_t> out;
  for (std::size_t t = begin; t < end; ++t) out.push_back(t);
  return out;
}

void trim_to(FuzzedDataProvider& in, PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  const std::uint64_t id = pick_id(in, hs);
  const std::size_t len = hs.known(id) ? hs.length(id) : 0;
  const std::size_t max = pick_size(in, len);
  compact(
      h, hs, id, keep_range(len - std::min(len, max), len), "trim_to", [&] { return h.trim_to(SequenceId{id}, max); },
      [&] { return r.trim_to(SequenceId{id}, max); });
}

void evict_to_window(FuzzedDataProvider& in, PagedKvCache& h, PagedKvCache& r, Harness& hs) {
  const std::uint64_t id = pick_id(in, hs);
  const std::size_t len = hs.known(id) ? hs.length(id) : 0;
  const std::size_t sinks = pick_size(in, len / 2);
  const std::size_t window = pick_size(in, len);
  std::vector<std::size_t> kept = keep_range(0, len);
  if (len > saturating_add(sinks, window)) {
    kept = keep_range(0, sinks);
    for (const std::size_t t : keep_range(len - window, len)) kept.push_back(t);
  }
  compact(
      h, hs, id, kept, "evict_to_window", [&] { return h.evict_to_window(SequenceId{id}, sinks, window); },
      [&] { return r.evict_to_window(SequenceId{id}, sinks, window); });
}

// H's state and stored pages through restore: the restored cache replaces H.
void round_trip(PagedKvCache& h, const Harness& hs) {
  const PagedKvState state = h.state();
  const std::vector<std::int32_t> kept = state.stored_pages();
  const PagedKvConfig& c = hs.config;
  const std::size_t row = 2 * c.page_size * c.kv_heads * c.head_dim;
  const Shape shape = c.layout == PagedLayout::Nhd ? Shape{kept.size(), 2, c.page_size, c.kv_heads, c.head_dim}
                                                   : Shape{kept.size(), 2, c.kv_heads, c.page_size, c.head_dim};
  std::vector<Tensor> stored;
  for (std::size_t slot = 0; slot < hs.groups.group_size; ++slot) {
    const auto layer = static_cast<std::size_t>(
        std::find(hs.groups.layer_slot.begin(), hs.groups.layer_slot.end(), slot) - hs.groups.layer_slot.begin());
    const std::vector<float> all = h.pages(layer).to_host_f32();
    std::vector<float> rows;
    for (const std::int32_t p : kept) {
      const auto from = all.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(p) * row);
      rows.insert(rows.end(), from, from + static_cast<std::ptrdiff_t>(row));
    }
    stored.push_back(Tensor::from_host(rows, shape, DType::F32));
  }
  std::optional<PagedKvCache> restored;
  allow(attempt("restore", [&] { restored.emplace(PagedKvCache::restore(h.config(), state, stored)); }), {}, "restore");
  check(restored->state() == state, "restore: the restored cache's state differs from the one it was given");
  h = std::move(*restored);
}

// H's config: see the header.
PagedKvConfig pick_config(FuzzedDataProvider& in) {
  PagedKvConfig c;
  c.page_size = std::size_t{1} << in.ConsumeIntegralInRange(0, 3);
  c.n_layers = in.ConsumeIntegralInRange<std::size_t>(2, 4);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    switch (in.ConsumeIntegralInRange(0, 2)) {
      case 0:
        c.layer_kinds.push_back(PagedLayerKind::full());
        break;
      case 1:
        c.layer_kinds.push_back(PagedLayerKind::sliding(in.ConsumeIntegralInRange<std::size_t>(1, 12)));
        break;
      default: {
        const std::size_t sinks = in.ConsumeIntegralInRange<std::size_t>(1, 4);
        c.layer_kinds.push_back(PagedLayerKind::sinks_and_window(sinks, in.ConsumeIntegralInRange<std::size_t>(1, 12)));
      }
    }
  }
  if (std::none_of(c.layer_kinds.begin(), c.layer_kinds.end(), [](const PagedLayerKind& k) { return k.is_full(); })) {
    c.layer_kinds[in.ConsumeIntegralInRange<std::size_t>(0, c.n_layers - 1)] = PagedLayerKind::full();
  }
  c.kv_heads = in.ConsumeIntegralInRange<std::size_t>(1, 2);
  c.head_dim = in.ConsumeIntegralInRange<std::size_t>(1, 4);
  c.dtype = DType::F32;
  c.layout = in.ConsumeBool() ? PagedLayout::Hnd : PagedLayout::Nhd;
  c.num_pages = in.ConsumeIntegralInRange<std::size_t>(1, 48);
  c.max_sequences = in.ConsumeIntegralInRange<std::size_t>(2, 8);
  if (in.ConsumeIntegralInRange(0, 3) == 3) c.max_sequence_len = in.ConsumeIntegralInRange<std::size_t>(1, 64);
  switch (in.ConsumeIntegralInRange(0, 31)) {
    case 30:  // a list of the wrong length
      if (in.ConsumeBool()) {
        c.layer_kinds.pop_back();
      } else {
        c.layer_kinds.push_back(PagedLayerKind::full());
      }
      break;
    case 31:  // sinks without a window
      c.layer_kinds[in.ConsumeIntegralInRange<std::size_t>(0, c.n_layers - 1)] =
          PagedLayerKind{.window = 0, .sinks = in.ConsumeIntegralInRange<std::size_t>(1, 4)};
      break;
    default:
      break;
  }
  return c;
}

// Whether validation must fail: a layer_kinds list of the wrong length, sinks without a window, or one page with a
// window layer.
bool malformed(const PagedKvConfig& c) {
  const bool windows =
      std::any_of(c.layer_kinds.begin(), c.layer_kinds.end(), [](const PagedLayerKind& k) { return !k.is_full(); });
  return c.layer_kinds.size() != c.n_layers ||
         std::any_of(c.layer_kinds.begin(), c.layer_kinds.end(),
                     [](const PagedLayerKind& k) { return k.is_full() && k.sinks > 0; }) ||
         (windows && c.num_pages < 2);
}

}  // namespace
}  // namespace micache::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace micache;
  using namespace micache::fuzz;
  FuzzedDataProvider in(data, size);
  Harness hs;
  hs.config = pick_config(in);
  if (malformed(hs.config)) {
    expect(attempt("validate", [&] { hs.config.validate(); }), {ErrorCode::Config}, "validate of a malformed config");
    expect(attempt("PagedKvCache", [&] { PagedKvCache cache(hs.config); }), {ErrorCode::Config},
           "PagedKvCache of a malformed config");
    return 0;
  }
  PagedKvCache h(hs.config);
  hs.groups = hs.config.layer_groups();
  check(h.layer_groups().layer_group == hs.groups.layer_group, "layer_groups() differ from the config's");
  for (std::size_t g = 0; g < hs.groups.groups(); ++g) {
    hs.group_layer.push_back(static_cast<std::size_t>(
        std::find(hs.groups.layer_group.begin(), hs.groups.layer_group.end(), g) - hs.groups.layer_group.begin()));
  }
  hs.page_size = hs.config.page_size;
  hs.pool_pages = hs.config.pool_pages();
  hs.null_page = hs.groups.has_windows() ? static_cast<std::int32_t>(hs.pool_pages) : -1;
  hs.sequence_len = hs.config.sequence_len();
  hs.h_slots = hs.pool_pages * hs.page_size;
  PagedKvConfig rc = hs.config;
  rc.layer_kinds.clear();
  rc.max_sequence_len = hs.sequence_len;
  rc.num_pages = rc.max_sequences * hs.config.row_capacity() + 1;
  PagedKvCache r(rc);
  hs.r_slots = rc.pool_pages() * rc.page_size;
  check(rc.row_capacity() == hs.config.row_capacity(), "the reference's rows differ");
  check_all(h, r, hs, "construction");
  static const char* const kNames[] = {
      "add_sequence()", "add_sequence(prompt)", "fork",    "release",         "begin_step",       "begin_step",
      "begin_step",     "begin_step",           "trim_to", "evict_to_window", "state and restore"};
  for (std::size_t calls = 0; calls < kMaxCalls && in.remaining_bytes() > 0; ++calls) {
    const int op = in.ConsumeIntegralInRange(0, 10);
    switch (op) {
      case 0:
        add_plain(h, r, hs);
        break;
      case 1:
        add_prompt(in, h, r, hs);
        break;
      case 2:
        fork(in, h, r, hs);
        break;
      case 3:
        release(in, h, r, hs);
        break;
      case 8:
        trim_to(in, h, r, hs);
        break;
      case 9:
        evict_to_window(in, h, r, hs);
        break;
      case 10:
        round_trip(h, hs);
        break;
      default:
        begin_step(in, h, r, hs);
        break;
    }
    check_all(h, r, hs, kNames[op]);
  }
  return 0;
}
