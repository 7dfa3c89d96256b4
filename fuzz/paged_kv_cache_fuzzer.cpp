// Fuzz target: PagedKvCache driven by a sequence of calls decoded from the input, checked after every call against a
// model of the pool that the target keeps itself.
//
// The config comes first: page_size 1, 2, 4 or 8, 4..64 pages, 1..2 layers, 1..2 kv heads, head_dim 1..4, F32,
// 2..8 sequences, and sometimes a max_sequence_len of 1..64. Then up to kMaxCalls calls: add_sequence() and
// add_sequence(prompt, salt) (token ids 0..3, prompts often a live or released sequence's ids, so prefix hits happen),
// fork, release, begin_step (with or without token ids, duplicate and unknown ids, counts that do not fit the pool or
// max_sequence_len, mismatched spans), write (a layer, the current plan, a stale one or none, keys of the wrong
// shape), trim_to, evict_to_window, evict_heavy_hitters (scores from the input, NaN and ties included; scores of a
// wrong shape or dtype) and the queries on an unknown id.
//
// The model keeps per sequence its tokens (original position and the token id it was fed, -1 for none), its page
// ids, whether its pages are still named, its salt; per page its name (the salt and the token ids up to the page's
// end) and its physical content (a stamp per slot and layer: what the last write, copy on write or compaction put
// there; 0: never written); the cached pages oldest first; the prefix counters. The page ids themselves come from
// the cache, checked: a step's or compaction's fresh pages were free or cached (free ones first, then the oldest
// cached), the pages it keeps are the ones the header promises. A written token's key element e is
// float(stamp * 8 + e) and its value the negation, so every gather is checked bit for bit.
//
// After every call, returned or thrown: pool_stats and prefix_stats against reference counts and names recomputed from
// the model, tokens as the sum of each held page's fill (its holders agreeing), each sequence's length, pages,
// positions, sequence_stats, row, block-table row and gathered keys and values in every layer, and
// device_accounting. A call that throws must throw the documented code and change nothing.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
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

constexpr std::size_t kMaxCalls = 64;
constexpr std::size_t kElements = 8;  // kv_heads x head_dim is at most 8: a stamp's elements

// The salt and every token id up to a page's end: what the page's hash chain names.
using Name = std::pair<std::uint64_t, std::vector<std::int32_t>>;

struct Token {
  std::size_t position = 0;
  std::int32_t id = -1;  // the token id it was fed; -1: none
};

struct Seq {
  std::vector<Token> tokens;
  std::vector<std::int32_t> pages;
  std::size_t next_position = 0;
  bool naming = true;
  std::uint64_t salt = 0;
};

// A step's plan and what it must hold.
struct Plan {
  PagedStepPlan plan;
  std::uint64_t epoch = 0;
  std::vector<std::int64_t> slots;
};

struct Model {
  PagedKvConfig config;
  std::size_t page_size = 1;
  std::size_t pages = 0;
  std::size_t elements = 1;  // kv_heads x head_dim
  std::size_t sequence_len = 0;
  std::size_t row_capacity = 0;
  std::map<std::uint64_t, Seq> seqs;
  std::vector<std::uint64_t> released;
  std::vector<std::vector<std::int32_t>> histories;  // token ids of sequences seen, for prompts that hit
  std::uint64_t next_id = 0;
  std::vector<std::optional<Name>> names;           // per page
  std::vector<std::int32_t> lru;                    // cached pages, oldest first
  std::vector<std::vector<std::uint32_t>> content;  // [layer][slot]: stamp, 0 never written
  std::uint64_t lookup_tokens = 0, hit_tokens = 0, hit_pages = 0, evictions = 0;
  std::uint64_t epoch = 0;  // successful begin_step calls and compactions: the valid plan's
  std::uint32_t stamp = 0;

  std::size_t fill(const Seq& s, std::size_t column) const {
    return std::min(page_size, s.tokens.size() - column * page_size);
  }
  std::size_t slot(const Seq& s, std::size_t t) const {
    return static_cast<std::size_t>(s.pages[t / page_size]) * page_size + t % page_size;
  }
  std::vector<std::uint32_t> refs() const {
    std::vector<std::uint32_t> out(pages, 0);
    for (const auto& [id, s] : seqs) {
      for (const std::int32_t p : s.pages) ++out[static_cast<std::size_t>(p)];
    }
    return out;
  }
  std::size_t used() const {
    const std::vector<std::uint32_t> r = refs();
    return static_cast<std::size_t>(std::count_if(r.begin(), r.end(), [](std::uint32_t c) { return c > 0; }));
  }
  std::size_t available() const { return pages - used(); }
  std::size_t named() const {
    return static_cast<std::size_t>(
        std::count_if(names.begin(), names.end(), [](const std::optional<Name>& n) { return n.has_value(); }));
  }
  Name name_of(const Seq& s, std::size_t column) const {
    Name name{s.salt, {}};
    for (std::size_t t = 0; t < (column + 1) * page_size; ++t) name.second.push_back(s.tokens[t].id);
    return name;
  }
  std::optional<std::int32_t> find(const Name& name) const {
    for (std::size_t p = 0; p < pages; ++p) {
      if (names[p] == name) return static_cast<std::int32_t>(p);
    }
    return std::nullopt;
  }
  // PagePool::name: a page keeps its first name; a name stays with the first page given it.
  void give_name(std::int32_t page, Name name) {
    if (names[static_cast<std::size_t>(page)] || find(name)) return;
    names[static_cast<std::size_t>(page)] = std::move(name);
  }
  void remember(const Seq& s) {
    std::vector<std::int32_t> ids;
    for (const Token& t : s.tokens) ids.push_back(t.id);
    if (!ids.empty() && histories.size() < 16) histories.push_back(std::move(ids));
  }
};

std::uint64_t raw(SequenceId id) { return static_cast<std::uint64_t>(id); }

// ---- the cache against the model ----------------------------------------------------------------------------------

float key_of(std::uint32_t stamp, std::size_t e) { return static_cast<float>(stamp * kElements + e); }

void check_gather(const PagedKvCache& cache, const Model& m, std::uint64_t id, const Seq& s, const char* after) {
  const std::size_t heads = m.config.kv_heads, dim = m.config.head_dim, len = s.tokens.size();
  for (std::size_t l = 0; l < m.config.n_layers; ++l) {
    const PagedKv kv = cache.gather(SequenceId{id}, l);
    const std::vector<std::size_t> dims{1, heads, len, dim};
    check(kv.keys.dims() == dims && kv.values.dims() == dims, "after {}: gather({}, {}) is {}, expected {}", after, id,
          l, kv.keys.shape().to_string(), Shape(dims).to_string());
    const std::vector<float> keys = kv.keys.to_host_f32();
    const std::vector<float> values = kv.values.to_host_f32();
    for (std::size_t t = 0; t < len; ++t) {
      const std::uint32_t stamp = m.content[l][m.slot(s, t)];
      if (stamp == 0) continue;
      for (std::size_t h = 0; h < heads; ++h) {
        for (std::size_t d = 0; d < dim; ++d) {
          const std::size_t at = (h * len + t) * dim + d;
          const float key = key_of(stamp, h * dim + d);
          check(same_float(keys[at], key) && same_float(values[at], -key),
                "after {}: gather({}, {}) token {} (position {}) head {} dim {}: key {} value {}, model {} (stamp {})",
                after, id, l, t, s.tokens[t].position, h, d, keys[at], values[at], key, stamp);
        }
      }
    }
  }
}

void check_state(const PagedKvCache& cache, const Model& m, const char* after) {
  const std::size_t ps = m.page_size;
  const std::size_t page_bytes = m.config.page_bytes();
  const std::vector<std::uint32_t> refs = m.refs();
  std::vector<std::size_t> fills(m.pages, 0);
  std::size_t used = 0, shared = 0, tokens = 0;
  for (const auto& [id, s] : m.seqs) {
    for (std::size_t j = 0; j < s.pages.size(); ++j) {
      const auto p = static_cast<std::size_t>(s.pages[j]);
      check(fills[p] == 0 || fills[p] == m.fill(s, j), "after {}: page {} holds {} tokens for one holder, {} for {}",
            after, p, fills[p], m.fill(s, j), id);
      fills[p] = m.fill(s, j);
    }
  }
  for (std::size_t p = 0; p < m.pages; ++p) {
    used += refs[p] >= 1 ? 1 : 0;
    shared += refs[p] >= 2 ? 1 : 0;
    tokens += refs[p] >= 1 ? fills[p] : 0;
    const auto listed = std::count(m.lru.begin(), m.lru.end(), static_cast<std::int32_t>(p));
    check(listed == (refs[p] == 0 && m.names[p] ? 1 : 0), "model: page {} listed {} times as cached", p, listed);
  }
  const PagedPoolStats stats = cache.pool_stats();
  const std::size_t cached = m.lru.size();
  check(stats.pages_total == m.pages && stats.pages_used == used && stats.pages_shared == shared &&
            stats.pages_cached == cached && stats.pages_free == m.pages - used - cached && stats.tokens == tokens,
        "after {}: pool total {} used {} shared {} cached {} free {} tokens {}, model {} {} {} {} {} {}", after,
        stats.pages_total, stats.pages_used, stats.pages_shared, stats.pages_cached, stats.pages_free, stats.tokens,
        m.pages, used, shared, cached, m.pages - used - cached, tokens);
  check(stats.pages_used + stats.pages_cached + stats.pages_free == stats.pages_total,
        "after {}: used {} + cached {} + free {} != total {}", after, stats.pages_used, stats.pages_cached,
        stats.pages_free, stats.pages_total);
  check(stats.bytes_total == m.pages * page_bytes && stats.bytes_used == used * page_bytes &&
            stats.bytes_cached == cached * page_bytes && stats.bytes_free == (m.pages - used - cached) * page_bytes,
        "after {}: pool bytes differ from pages x {}", after, page_bytes);
  check(cache.memory_usage() == tokens * m.config.bytes_per_token(), "after {}: memory_usage {}, model {}", after,
        cache.memory_usage(), tokens * m.config.bytes_per_token());
  const PrefixCacheStats prefix = cache.prefix_stats();
  check(prefix.lookup_tokens == m.lookup_tokens && prefix.hit_tokens == m.hit_tokens &&
            prefix.hit_pages == m.hit_pages && prefix.evictions == m.evictions && prefix.named_pages == m.named(),
        "after {}: prefix lookups {} hits {} hit pages {} evictions {} named {}, model {} {} {} {} {}", after,
        prefix.lookup_tokens, prefix.hit_tokens, prefix.hit_pages, prefix.evictions, prefix.named_pages,
        m.lookup_tokens, m.hit_tokens, m.hit_pages, m.evictions, m.named());
  check(cache.num_sequences() == m.seqs.size(), "after {}: {} sequences, model {}", after, cache.num_sequences(),
        m.seqs.size());

  const std::vector<std::int32_t> table = cache.block_table().to_host_i32();
  check(table.size() == m.config.max_sequences * m.row_capacity, "after {}: block table of {} entries, expected {}",
        after, table.size(), m.config.max_sequences * m.row_capacity);
  std::vector<SequenceId> ids;
  std::set<std::size_t> rows;
  for (const auto& [id, s] : m.seqs) {
    const SequenceId sid{id};
    ids.push_back(sid);
    const std::size_t len = s.tokens.size();
    check(cache.length(sid) == len, "after {}: length({}) {}, model {}", after, id, cache.length(sid), len);
    check(len <= m.sequence_len, "after {}: sequence {} holds {} tokens, above max_sequence_len {}", after, id, len,
          m.sequence_len);
    check(s.pages.size() == (len + ps - 1) / ps, "after {}: model sequence {} has {} pages for {} tokens", after, id,
          s.pages.size(), len);
    check(cache.pages_of(sid) == s.pages, "after {}: pages_of({}) differ from the model", after, id);
    check(std::set<std::int32_t>(s.pages.begin(), s.pages.end()).size() == s.pages.size(),
          "after {}: sequence {} holds a page twice", after, id);
    std::vector<std::size_t> positions;
    for (const Token& t : s.tokens) positions.push_back(t.position);
    check(cache.positions(sid) == positions, "after {}: positions({}) differ from the model", after, id);
    const PagedSequenceStats st = cache.sequence_stats(sid);
    check(st.tokens == len && st.pages == s.pages.size() && st.bytes == s.pages.size() * page_bytes &&
              st.slack == s.pages.size() * ps - len,
          "after {}: sequence_stats({}) = ({}, {}, {}, {})", after, id, st.tokens, st.pages, st.bytes, st.slack);
    const std::size_t row = cache.row_of(sid);
    check(row < m.config.max_sequences && rows.insert(row).second, "after {}: row {} of {} out of range or taken",
          after, row, id);
    for (std::size_t j = 0; j < s.pages.size(); ++j) {
      check(table[row * m.row_capacity + j] == s.pages[j], "after {}: block table row {} column {} is {}, page {}",
            after, row, j, table[row * m.row_capacity + j], s.pages[j]);
    }
    check_gather(cache, m, id, s, after);
  }

  check_device_accounting(cache, ids, after);
}

// Runs `call`; an error must be one of `expected` (none: it must succeed). True when it succeeded.
template <class Call>
bool outcome(const char* what, Codes expected, Call&& call) {
  const std::optional<Error> got = attempt(what, std::forward<Call>(call));
  expect(got, expected, what);
  return !got;
}

// ---- page bookkeeping shared by steps and compactions -------------------------------------------------------------

// Checks that `fresh` pages were free or cached before (`refs` then), distinct, free ones taken first and then the
// oldest cached ones, and forgets the names of those that were cached (an eviction each).
void take_fresh(Model& m, const std::vector<std::uint32_t>& refs, const std::vector<std::int32_t>& fresh,
                const char* what) {
  std::set<std::int32_t> seen;
  std::size_t from_cache = 0;
  for (const std::int32_t p : fresh) {
    check(p >= 0 && static_cast<std::size_t>(p) < m.pages, "{}: fresh page {} out of range", what, p);
    check(seen.insert(p).second, "{}: fresh page {} handed out twice", what, p);
    check(refs[static_cast<std::size_t>(p)] == 0, "{}: fresh page {} was held by {} sequences", what, p,
          refs[static_cast<std::size_t>(p)]);
    from_cache += m.names[static_cast<std::size_t>(p)] ? 1 : 0;
  }
  const std::size_t used =
      static_cast<std::size_t>(std::count_if(refs.begin(), refs.end(), [](std::uint32_t c) { return c > 0; }));
  const std::size_t free = m.pages - used - m.lru.size();
  const std::size_t want = fresh.size() > free ? fresh.size() - free : 0;
  check(from_cache == want, "{}: {} fresh pages, {} of them cached, with {} free", what, fresh.size(), from_cache,
        free);
  for (std::size_t i = 0; i < from_cache; ++i) {
    check(seen.count(m.lru[i]) == 1, "{}: evicted a cached page other than the {} oldest", what, from_cache);
  }
  m.lru.erase(m.lru.begin(), m.lru.begin() + static_cast<std::ptrdiff_t>(from_cache));
  for (const std::int32_t p : fresh) m.names[static_cast<std::size_t>(p)].reset();
  m.evictions += from_cache;
}

// Pages a sequence stopped holding, in the order the cache returns them: named ones no sequence holds are cached.
void drop(Model& m, const std::vector<std::int32_t>& dropped) {
  const std::vector<std::uint32_t> refs = m.refs();
  for (const std::int32_t p : dropped) {
    if (refs[static_cast<std::size_t>(p)] == 0 && m.names[static_cast<std::size_t>(p)]) m.lru.push_back(p);
  }
}

// ---- the calls ----------------------------------------------------------------------------------------------------

// A live id mostly; sometimes one never added, or a released one.
std::uint64_t pick_id(FuzzedDataProvider& in, const Model& m) {
  const std::size_t live = m.seqs.size();
  const std::size_t c = in.ConsumeIntegralInRange<std::size_t>(0, live + 1);
  if (c < live) return std::next(m.seqs.begin(), static_cast<std::ptrdiff_t>(c))->first;
  if (c == live + 1 && !m.released.empty()) {
    return m.released[in.ConsumeIntegralInRange<std::size_t>(0, m.released.size() - 1)];
  }
  return m.next_id + (c - live);
}

bool known(const Model& m, std::uint64_t id) { return m.seqs.count(id) == 1; }

// A count, window or budget: mostly up to `scale` + 2, sometimes near SIZE_MAX.
std::size_t pick_size(FuzzedDataProvider& in, std::size_t scale) {
  if (in.ConsumeIntegralInRange(0, 15) == 15) {
    return std::numeric_limits<std::size_t>::max() - in.ConsumeIntegralInRange<std::size_t>(0, 3);
  }
  return in.ConsumeIntegralInRange<std::size_t>(0, scale + 2);
}

std::int32_t pick_token(FuzzedDataProvider& in) { return in.ConsumeIntegralInRange<std::int32_t>(0, 3); }

void add_plain(PagedKvCache& cache, Model& m) {
  const bool full = m.seqs.size() == m.config.max_sequences;
  SequenceId id{};
  if (!outcome("add_sequence()", full ? Codes{ErrorCode::OutOfMemory} : Codes{}, [&] { id = cache.add_sequence(); })) {
    return;
  }
  check(raw(id) == m.next_id, "add_sequence(): id {}, expected {}", raw(id), m.next_id);
  m.seqs[m.next_id++] = Seq{};
}

void add_prompt(FuzzedDataProvider& in, PagedKvCache& cache, Model& m) {
  std::vector<std::int32_t> prompt;
  std::vector<std::vector<std::int32_t>> sources = m.histories;  // released sequences' ids, then live ones'
  for (const auto& [id, s] : m.seqs) {
    sources.emplace_back();
    for (const Token& t : s.tokens) sources.back().push_back(t.id);
  }
  if (in.ConsumeBool() && !sources.empty()) {
    const auto& h = sources[in.ConsumeIntegralInRange<std::size_t>(0, sources.size() - 1)];
    prompt.assign(h.begin(),
                  h.begin() + static_cast<std::ptrdiff_t>(in.ConsumeIntegralInRange<std::size_t>(0, h.size())));
  }
  const std::size_t tail = in.ConsumeIntegralInRange<std::size_t>(0, in.ConsumeBool() ? 40 : 4);
  for (std::size_t i = 0; i < tail && prompt.size() < 40; ++i) prompt.push_back(pick_token(in));
  std::replace(prompt.begin(), prompt.end(), -1, 0);
  const std::uint64_t salt = in.ConsumeIntegralInRange<std::uint64_t>(0, 1);

  const bool full = m.seqs.size() == m.config.max_sequences;
  PrefixHit hit;
  if (!outcome("add_sequence(prompt)", full ? Codes{ErrorCode::OutOfMemory} : Codes{},
               [&] { hit = cache.add_sequence(prompt, salt); })) {
    return;
  }
  const std::size_t ps = m.page_size;
  const std::size_t usable = prompt.empty() ? 0 : std::min((prompt.size() - 1) / ps, m.row_capacity);
  std::vector<std::int32_t> pages;
  for (std::size_t j = 0; j < usable; ++j) {
    const std::optional<std::int32_t> page = m.find(Name{
        salt, std::vector<std::int32_t>(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>((j + 1) * ps))});
    if (!page) break;
    pages.push_back(*page);
  }
  check(raw(hit.id) == m.next_id, "add_sequence(prompt): id {}, expected {}", raw(hit.id), m.next_id);
  check(hit.cached_tokens % ps == 0 && (prompt.empty() || hit.cached_tokens <= (prompt.size() - 1) / ps * ps),
        "add_sequence(prompt of {}): cached_tokens {} with page_size {}", prompt.size(), hit.cached_tokens, ps);
  check(hit.cached_tokens == pages.size() * ps, "add_sequence(prompt of {}, salt {}): cached_tokens {}, model {}",
        prompt.size(), salt, hit.cached_tokens, pages.size() * ps);
  Seq s;
  s.salt = salt;
  s.pages = pages;
  for (std::size_t t = 0; t < hit.cached_tokens; ++t) s.tokens.push_back({t, prompt[t]});
  s.next_position = hit.cached_tokens;
  for (const std::int32_t p : pages) std::erase(m.lru, p);  // a cached page is used again
  m.lookup_tokens += prompt.size();
  m.hit_tokens += hit.cached_tokens;
  m.hit_pages += pages.size();
  m.seqs[m.next_id++] = std::move(s);
}

void fork(FuzzedDataProvider& in, PagedKvCache& cache, Model& m) {
  const std::uint64_t parent = pick_id(in, m);
  Codes expected;
  if (!known(m, parent)) {
    expected = {ErrorCode::Hook};
  } else if (m.seqs.size() == m.config.max_sequences) {
    expected = {ErrorCode::OutOfMemory};
  }
  SequenceId id{};
  if (!outcome("fork", expected, [&] { id = cache.fork(SequenceId{parent}); })) return;
  check(raw(id) == m.next_id, "fork: id {}, expected {}", raw(id), m.next_id);
  m.seqs[m.next_id++] = m.seqs.at(parent);
}

void release(FuzzedDataProvider& in, PagedKvCache& cache, Model& m) {
  const std::uint64_t id = pick_id(in, m);
  if (!outcome("release", known(m, id) ? Codes{} : Codes{ErrorCode::Hook}, [&] { cache.release(SequenceId{id}); })) {
    return;
  }
  Seq s = std::move(m.seqs.at(id));
  m.seqs.erase(id);
  m.remember(s);
  m.released.push_back(id);
  std::reverse(s.pages.begin(), s.pages.end());  // returned last page first
  drop(m, s.pages);
}

struct Entry {
  std::uint64_t id = 0;
  std::size_t count = 0;
  bool copy_on_write = false;
  std::size_t old_length = 0;
};

void begin_step(FuzzedDataProvider& in, PagedKvCache& cache, Model& m, std::vector<Plan>& plans) {
  const std::size_t batch = in.ConsumeIntegralInRange<std::size_t>(0, 4);
  std::vector<Entry> entries(batch);
  std::vector<SequenceId> ids;
  std::vector<std::size_t> counts;
  for (Entry& e : entries) {
    e.id = pick_id(in, m);
    const int kind = in.ConsumeIntegralInRange(0, 15);
    e.count = kind < 12 ? in.ConsumeIntegralInRange<std::size_t>(0, 3)
                        : (kind < 15 ? in.ConsumeIntegralInRange<std::size_t>(0, 40) : pick_size(in, 1000));
    ids.push_back(SequenceId{e.id});
    counts.push_back(e.count);
  }
  const bool with_ids = in.ConsumeBool();
  const int flaw = in.ConsumeIntegralInRange(0, 31);  // 30: one count too many, 31: one token id too many
  if (flaw == 30) counts.push_back(0);

  Codes expected;
  std::set<std::uint64_t> listed;
  bool valid = true;
  for (const Entry& e : entries) {
    if (!known(m, e.id)) {
      expected.add(ErrorCode::Hook);
      valid = false;
    } else if (!listed.insert(e.id).second) {
      expected.add(ErrorCode::Config);
      valid = false;
    }
  }
  if (flaw == 30) expected = {ErrorCode::Shape};
  std::size_t total_new = 0, fresh = 0;
  const std::vector<std::uint32_t> refs = m.refs();
  bool entries_ok = false;  // every entry passes its own checks: the token ids' count is checked next
  if (valid && flaw != 30) {
    std::map<std::int32_t, std::uint32_t> holders_left;
    for (Entry& e : entries) {
      const Seq& s = m.seqs.at(e.id);
      const std::size_t len = s.tokens.size();
      e.old_length = len;
      if (e.count > m.pages * m.page_size - len) {
        expected.add(ErrorCode::OutOfMemory);
        continue;
      }
      if (e.count > m.sequence_len - std::min(len, m.sequence_len)) expected.add(ErrorCode::Config);
      if (e.count > 0 && len % m.page_size != 0 && refs[static_cast<std::size_t>(s.pages.back())] > 1) {
        std::uint32_t& left =
            holders_left.try_emplace(s.pages.back(), refs[static_cast<std::size_t>(s.pages.back())]).first->second;
        e.copy_on_write = left > 1;
        if (e.copy_on_write) --left;
      }
      fresh += (len + e.count + m.page_size - 1) / m.page_size - s.pages.size() + (e.copy_on_write ? 1 : 0);
      total_new += e.count;
    }
    entries_ok = expected.empty();
    if (entries_ok && fresh > m.available()) expected.add(ErrorCode::OutOfMemory);
  }
  std::vector<std::int32_t> token_ids;
  if (with_ids) {
    const std::size_t n = (entries_ok ? total_new : 4) + (flaw == 31 ? 1 : 0);
    for (std::size_t i = 0; i < n; ++i) token_ids.push_back(pick_token(in));
    if (flaw == 31 && entries_ok) expected.add(ErrorCode::Shape);
  }

  Plan plan;
  if (!outcome("begin_step", expected, [&] { plan.plan = cache.begin_step(ids, counts, token_ids); })) return;

  // The pages: the old ones but a copied-on-write last page, then fresh ones.
  std::vector<std::int32_t> taken;
  for (const Entry& e : entries) {
    const Seq& s = m.seqs.at(e.id);
    const std::vector<std::int32_t> now = cache.pages_of(SequenceId{e.id});
    const std::size_t want = (e.old_length + e.count + m.page_size - 1) / m.page_size;
    check(now.size() == want, "begin_step: sequence {} holds {} pages, expected {}", e.id, now.size(), want);
    const std::size_t kept = s.pages.size() - (e.copy_on_write ? 1 : 0);
    check(std::equal(s.pages.begin(), s.pages.begin() + static_cast<std::ptrdiff_t>(kept), now.begin()),
          "begin_step: sequence {} changed pages it keeps", e.id);
    taken.insert(taken.end(), now.begin() + static_cast<std::ptrdiff_t>(kept), now.end());
  }
  take_fresh(m, refs, taken, "begin_step");
  std::vector<std::int32_t> dropped;
  for (const Entry& e : entries) {
    Seq& s = m.seqs.at(e.id);
    std::vector<std::int32_t> now = cache.pages_of(SequenceId{e.id});
    if (e.copy_on_write) {
      const auto from = static_cast<std::size_t>(s.pages.back()) * m.page_size;
      const auto to = static_cast<std::size_t>(now[s.pages.size() - 1]) * m.page_size;
      for (auto& layer : m.content)
        std::copy_n(layer.begin() + static_cast<std::ptrdiff_t>(from), m.page_size,
                    layer.begin() + static_cast<std::ptrdiff_t>(to));
      dropped.push_back(s.pages.back());
    }
    s.pages = std::move(now);
  }
  drop(m, dropped);  // a copied page stays held by another sequence: it is never cached here

  std::size_t token = 0;
  for (const Entry& e : entries) {
    Seq& s = m.seqs.at(e.id);
    for (std::size_t i = 0; i < e.count; ++i) {
      s.tokens.push_back({s.next_position++, with_ids ? token_ids[token + i] : -1});
      plan.slots.push_back(static_cast<std::int64_t>(m.slot(s, s.tokens.size() - 1)));
    }
    token += e.count;
  }
  for (const Entry& e : entries) {
    Seq& s = m.seqs.at(e.id);
    if (e.count == 0) continue;
    if (!with_ids) {
      s.naming = false;
      continue;
    }
    if (!s.naming) continue;
    for (std::size_t j = e.old_length / m.page_size; j < s.tokens.size() / m.page_size; ++j) {
      m.give_name(s.pages[j], m.name_of(s, j));
    }
  }

  // The plan's metadata.
  const PagedStepPlan& p = plan.plan;
  check(p.batch == batch && p.total_new == plan.slots.size(), "begin_step: plan batch {} total_new {}, expected {} {}",
        p.batch, p.total_new, batch, plan.slots.size());
  check(p.slot_mapping.to_host_i64() == plan.slots, "begin_step: slot_mapping differs from the pages");
  std::vector<std::int32_t> indptr{0}, indices, last, qo{0};
  for (const Entry& e : entries) {
    const Seq& s = m.seqs.at(e.id);
    indices.insert(indices.end(), s.pages.begin(), s.pages.end());
    indptr.push_back(static_cast<std::int32_t>(indices.size()));
    last.push_back(s.tokens.empty() ? 0 : static_cast<std::int32_t>((s.tokens.size() - 1) % m.page_size + 1));
    qo.push_back(qo.back() + static_cast<std::int32_t>(e.count));
  }
  check(p.kv_indptr.to_host_i32() == indptr && p.kv_indices.to_host_i32() == indices &&
            p.kv_last_page_len.to_host_i32() == last && p.qo_indptr.to_host_i32() == qo,
        "begin_step: FlashInfer metadata differs from the pages");
  plan.epoch = ++m.epoch;
  plans.push_back(std::move(plan));
  if (plans.size() > 3) plans.erase(plans.begin());
}

void write(FuzzedDataProvider& in, PagedKvCache& cache, Model& m, const std::vector<Plan>& plans) {
  const Plan none;
  const std::size_t choice = in.ConsumeIntegralInRange<std::size_t>(0, plans.size());
  const Plan& plan = choice < plans.size() ? plans[plans.size() - 1 - choice] : none;
  const std::size_t layer = in.ConsumeIntegralInRange<std::size_t>(0, m.config.n_layers);  // n_layers: out of range
  const bool bad_shape = in.ConsumeIntegralInRange(0, 15) == 15;
  const std::size_t n = plan.plan.total_new + (bad_shape ? 1 : 0);
  std::vector<float> keys, values;
  std::vector<std::uint32_t> stamps;
  for (std::size_t t = 0; t < n; ++t) {
    stamps.push_back(++m.stamp);
    for (std::size_t e = 0; e < m.elements; ++e) {
      keys.push_back(key_of(m.stamp, e));
      values.push_back(-key_of(m.stamp, e));
    }
  }
  const Shape shape{n, m.config.kv_heads, m.config.head_dim};
  const Tensor k = Tensor::from_host(keys, shape, DType::F32);
  const Tensor v = Tensor::from_host(values, shape, DType::F32);
  Codes expected;
  if (layer >= m.config.n_layers) expected.add(ErrorCode::Hook);
  if (choice == plans.size() || plan.epoch != m.epoch) expected.add(ErrorCode::Config);
  if (bad_shape) expected.add(ErrorCode::Shape);
  if (!outcome("write", expected, [&] { cache.write(layer, plan.plan, k, v); })) return;
  for (std::size_t t = 0; t < plan.slots.size(); ++t) {
    m.content[layer][static_cast<std::size_t>(plan.slots[t])] = stamps[t];
  }
}

// The policies (eviction.hpp), from the header's words.
std::vector<std::size_t> keep_range(std::size_t begin, std::size_t end) {
  std::vector<std::size_t> out;
  for (std::size_t t = begin; t < end; ++t) out.push_back(t);
  return out;
}

std::size_t saturating_add(std::size_t a, std::size_t b) {
  return a > std::numeric_limits<std::size_t>::max() - b ? std::numeric_limits<std::size_t>::max() : a + b;
}

// Keeps `kept` (ascending indices) of sequence `id`, as a compaction: returns whether it succeeded.
template <class Call>
void compact(PagedKvCache& cache, Model& m, std::uint64_t id, const std::vector<std::size_t>& kept, Codes expected,
             const char* what, Call&& call) {
  bool returned = false;
  const auto run = [&] { returned = call(); };
  if (!expected.empty()) {
    outcome(what, expected, run);
    return;
  }
  const Seq& s = m.seqs.at(id);
  const std::size_t ps = m.page_size, len = s.tokens.size();
  if (kept.size() == len) {
    outcome(what, {}, run);
    check(!returned, "{}: returned true keeping all {} tokens", what, len);
    return;
  }
  // Page by page: a new page holding one old page's first tokens in order is that page when they are all of its
  // tokens, or when no other sequence holds it and it has no name; the others are fresh.
  const std::vector<std::uint32_t> refs = m.refs();
  const std::size_t pages = (kept.size() + ps - 1) / ps;
  std::vector<std::optional<std::size_t>> source(pages);
  std::size_t fresh = 0;
  for (std::size_t k = 0; k < pages; ++k) {
    const std::size_t first = k * ps, count = std::min(ps, kept.size() - first);
    const std::size_t column = kept[first] / ps;
    const auto old = static_cast<std::size_t>(s.pages[column]);
    const bool in_order = kept[first] % ps == 0 && kept[first + count - 1] == kept[first] + count - 1;
    const bool whole = count == m.fill(s, column);
    if (in_order && (whole || (refs[old] == 1 && !m.names[old]))) {
      source[k] = column;
    } else {
      ++fresh;
    }
  }
  if (fresh > m.available()) {
    outcome(what, {ErrorCode::OutOfMemory}, run);
    return;
  }
  outcome(what, {}, run);
  check(returned, "{}: returned false evicting {} of {} tokens", what, len - kept.size(), len);
  const std::vector<std::int32_t> now = cache.pages_of(SequenceId{id});
  check(now.size() == pages, "{}: {} pages for {} kept tokens", what, now.size(), kept.size());
  std::vector<std::int32_t> taken;
  std::vector<bool> old_kept(s.pages.size(), false);
  for (std::size_t k = 0; k < pages; ++k) {
    if (source[k]) {
      check(now[k] == s.pages[*source[k]], "{}: page {} is {}, expected old page {} kept as it is", what, k, now[k],
            s.pages[*source[k]]);
      old_kept[*source[k]] = true;
    } else {
      taken.push_back(now[k]);
    }
  }
  take_fresh(m, refs, taken, what);
  const std::vector<std::vector<std::uint32_t>> before = m.content;
  Seq next = s;
  next.pages = now;
  next.tokens.clear();
  for (const std::size_t t : kept) next.tokens.push_back(s.tokens[t]);
  next.naming = false;
  for (std::size_t k = 0; k < pages; ++k) {
    if (source[k]) continue;
    for (std::size_t i = k * ps; i < std::min(kept.size(), (k + 1) * ps); ++i) {
      for (std::size_t l = 0; l < m.content.size(); ++l) m.content[l][m.slot(next, i)] = before[l][m.slot(s, kept[i])];
    }
  }
  std::vector<std::int32_t> dropped;
  for (std::size_t j = s.pages.size(); j-- > 0;) {
    if (!old_kept[j]) dropped.push_back(s.pages[j]);
  }
  m.seqs.at(id) = std::move(next);
  drop(m, dropped);
  ++m.epoch;
}

void trim_to(FuzzedDataProvider& in, PagedKvCache& cache, Model& m) {
  const std::uint64_t id = pick_id(in, m);
  const std::size_t len = known(m, id) ? m.seqs.at(id).tokens.size() : 0;
  const std::size_t max = pick_size(in, len);
  compact(cache, m, id, keep_range(len - std::min(len, max), len), known(m, id) ? Codes{} : Codes{ErrorCode::Hook},
          "trim_to", [&] { return cache.trim_to(SequenceId{id}, max); });
}

void evict_to_window(FuzzedDataProvider& in, PagedKvCache& cache, Model& m) {
  const std::uint64_t id = pick_id(in, m);
  const std::size_t len = known(m, id) ? m.seqs.at(id).tokens.size() : 0;
  const std::size_t sinks = pick_size(in, len / 2);
  const std::size_t window = pick_size(in, len);
  std::vector<std::size_t> kept = keep_range(0, len);
  if (len > saturating_add(sinks, window)) {
    kept = keep_range(0, sinks);
    for (const std::size_t t : keep_range(len - window, len)) kept.push_back(t);
  }
  compact(cache, m, id, kept, known(m, id) ? Codes{} : Codes{ErrorCode::Hook}, "evict_to_window",
          [&] { return cache.evict_to_window(SequenceId{id}, sinks, window); });
}

float pick_score(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 7)) {
    case 0:
      return -0.0f;
    case 1:
      return std::numeric_limits<float>::quiet_NaN();
    case 2:
      return std::numeric_limits<float>::infinity();
    case 3:
      return -std::numeric_limits<float>::infinity();
    default:
      return static_cast<float>(in.ConsumeIntegralInRange(-3, 3)) * 0.5f;
  }
}

void evict_heavy_hitters(FuzzedDataProvider& in, PagedKvCache& cache, Model& m) {
  const std::uint64_t id = pick_id(in, m);
  const std::size_t len = known(m, id) ? m.seqs.at(id).tokens.size() : 0;
  const int flaw = in.ConsumeIntegralInRange(0, 15);  // 12: other length, 13: rank 2, 14: I32, 15: undefined
  std::vector<float> scores(flaw == 12 ? len + 1 : len);
  for (float& s : scores) s = pick_score(in);
  const std::size_t heavy = pick_size(in, len / 2);
  const std::size_t window = pick_size(in, len / 2);
  Tensor tensor;
  if (flaw == 13) {
    tensor = Tensor::from_host(scores, {1, scores.size()}, DType::F32);
  } else if (flaw == 14) {
    tensor = Tensor::from_host_i32(std::vector<std::int32_t>(scores.size()), {scores.size()});
  } else if (flaw != 15) {
    tensor = Tensor::from_host(scores, {scores.size()}, DType::F32);
  }
  Codes expected;
  if (!known(m, id)) {
    expected = {ErrorCode::Hook};
  } else if (flaw == 12 || flaw == 13) {
    expected = {ErrorCode::Shape};
  } else if (flaw == 14 || flaw == 15) {
    expected = {ErrorCode::Config};
  }
  std::vector<std::size_t> kept = keep_range(0, len);
  if (len > saturating_add(heavy, window)) {
    // The `heavy` best older tokens (score descending, ties by lower index, NaN last), then the window.
    kept = keep_range(0, len - window);
    std::stable_sort(kept.begin(), kept.end(), [&](std::size_t a, std::size_t b) {
      return !std::isnan(scores[a]) && (std::isnan(scores[b]) || scores[a] > scores[b]);
    });
    kept.resize(heavy);
    std::sort(kept.begin(), kept.end());
    for (const std::size_t t : keep_range(len - window, len)) kept.push_back(t);
  }
  compact(cache, m, id, kept, expected, "evict_heavy_hitters",
          [&] { return cache.evict_heavy_hitters(SequenceId{id}, tensor, heavy, window); });
}

void query_unknown(FuzzedDataProvider& in, const PagedKvCache& cache, const Model& m) {
  const SequenceId id{m.next_id + in.ConsumeIntegralInRange<std::uint64_t>(0, 2)};
  const Codes hook{ErrorCode::Hook};
  expect(attempt("length", [&] { cache.length(id); }), hook, "length of an unknown id");
  expect(attempt("pages_of", [&] { cache.pages_of(id); }), hook, "pages_of an unknown id");
  expect(attempt("positions", [&] { cache.positions(id); }), hook, "positions of an unknown id");
  expect(attempt("sequence_stats", [&] { cache.sequence_stats(id); }), hook, "sequence_stats of an unknown id");
  expect(attempt("row_of", [&] { cache.row_of(id); }), hook, "row_of an unknown id");
  expect(attempt("gather", [&] { cache.gather(id, 0); }), hook, "gather of an unknown id");
  const std::vector<SequenceId> ids{id};
  expect(attempt("device_accounting", [&] { cache.device_accounting(ids); }), hook,
         "device_accounting of an unknown id");
  if (!m.seqs.empty()) {
    const SequenceId live{m.seqs.begin()->first};
    expect(attempt("gather", [&] { cache.gather(live, m.config.n_layers); }), hook, "gather of a layer out of range");
  }
}

PagedKvConfig pick_config(FuzzedDataProvider& in) {
  PagedKvConfig c;
  c.page_size = std::size_t{1} << in.ConsumeIntegralInRange(0, 3);
  c.num_pages = in.ConsumeIntegralInRange<std::size_t>(4, 64);
  c.n_layers = in.ConsumeIntegralInRange<std::size_t>(1, 2);
  c.kv_heads = in.ConsumeIntegralInRange<std::size_t>(1, 2);
  c.head_dim = in.ConsumeIntegralInRange<std::size_t>(1, 4);
  c.dtype = DType::F32;
  c.max_sequences = in.ConsumeIntegralInRange<std::size_t>(2, 8);
  if (in.ConsumeIntegralInRange(0, 3) == 3) c.max_sequence_len = in.ConsumeIntegralInRange<std::size_t>(1, 64);
  return c;
}

}  // namespace
}  // namespace micache::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace micache;
  using namespace micache::fuzz;
  FuzzedDataProvider in(data, size);
  Model m;
  m.config = pick_config(in);
  PagedKvCache cache(m.config);
  m.page_size = m.config.page_size;
  m.pages = m.config.pages();
  m.elements = m.config.kv_heads * m.config.head_dim;
  m.sequence_len = m.config.sequence_len();
  m.row_capacity = m.config.row_capacity();
  m.names.assign(m.pages, std::nullopt);
  m.content.assign(m.config.n_layers, std::vector<std::uint32_t>(m.pages * m.page_size, 0));
  std::vector<Plan> plans;
  check_state(cache, m, "construction");
  static const char* const kNames[] = {"add_sequence()",
                                       "add_sequence(prompt)",
                                       "fork",
                                       "release",
                                       "begin_step",
                                       "begin_step",
                                       "write",
                                       "write",
                                       "trim_to",
                                       "evict_to_window",
                                       "evict_heavy_hitters",
                                       "queries on an unknown id"};
  for (std::size_t calls = 0; calls < kMaxCalls && in.remaining_bytes() > 0; ++calls) {
    const int op = in.ConsumeIntegralInRange(0, 11);
    switch (op) {
      case 0:
        add_plain(cache, m);
        break;
      case 1:
        add_prompt(in, cache, m);
        break;
      case 2:
        fork(in, cache, m);
        break;
      case 3:
        release(in, cache, m);
        break;
      case 4:
      case 5:
        begin_step(in, cache, m, plans);
        break;
      case 6:
      case 7:
        write(in, cache, m, plans);
        break;
      case 8:
        trim_to(in, cache, m);
        break;
      case 9:
        evict_to_window(in, cache, m);
        break;
      case 10:
        evict_heavy_hitters(in, cache, m);
        break;
      default:
        query_unknown(in, cache, m);
        break;
    }
    check_state(cache, m, kNames[op]);
  }
  return 0;
}
