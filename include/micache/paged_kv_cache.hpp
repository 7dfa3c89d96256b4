// PagedKvCache: many sequences of different lengths in one pool of fixed-size pages (vLLM's paged KV cache,
// FlashInfer's single-tensor page layout).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "micache/backend/paged_kv.hpp"
#include "micache/backend/paged_tables.hpp"
#include "micache/device.hpp"
#include "micache/dtype.hpp"
#include "micache/paged_kv_config.hpp"
#include "micache/paged_kv_stats.hpp"
#include "micache/paged_kv_state.hpp"
#include "micache/position_runs.hpp"
#include "micache/stream.hpp"
#include "micache/tensor.hpp"

namespace micache {

class Backend;
class KeptTokens;
namespace detail {
class PagePool;
}

/// A sequence of a PagedKvCache. Ids are handed out in increasing order and
/// never reused, so a released id stays unknown.
enum class SequenceId : std::uint64_t {};

/// What one `begin_step` reserved, as the device arrays of vLLM and FlashInfer.
/// Every array is a device tensor on the cache's device and stream; all five
/// are views into one packed buffer (accounted once, in memory_stats) that
/// the step's build launch wrote from the device page tables, kept alive by
/// any of them. They describe the step's `batch` sequences in the order of its ids:
/// - `slot_mapping` I64 `[groups x total_new]`: per layer group (see
///   PagedLayerGroups; one unless some layer has a window), the slot (page *
///   page_size + offset) of each new token, in the order of the ids, then of
///   the tokens; `PagedKvCache::slot_mapping(plan, layer)` is a layer's part;
/// - `kv_indptr` I32 `[batch + 1]`, `kv_indices` I32 `[groups x total_pages]`,
///   `kv_last_page_len` I32 `[batch]`: FlashInfer's paged metadata for the
///   attention after the write, every page of each sequence (new tokens
///   included), group after group (`PagedKvCache::kv_indices(plan, layer)`
///   is a layer's part; kv_indptr and kv_last_page_len are every group's:
///   the groups' tables are aligned, token t in column t / page_size of
///   each); a window layer's column whose tokens it no longer attends names
///   the null page (vLLM's null block; FlashInfer's window_left masks it);
///   the last page's length is in 1..page_size, 0 for an empty sequence;
/// - `qo_indptr` I32 `[batch + 1]`: prefix sums of the new token counts (prefill).
/// A plan is valid for `PagedKvCache::write` until the next successful
/// `begin_step`; its members are the cache's answer, to read, not to change.
class PagedStepPlan {
 public:
  Tensor slot_mapping;
  Tensor kv_indptr;
  Tensor kv_indices;
  Tensor kv_last_page_len;
  Tensor qo_indptr;
  std::size_t batch = 0;        ///< sequences in the step
  std::size_t total_new = 0;    ///< new tokens over the step
  std::size_t total_pages = 0;  ///< pages over the step's sequences, in one group
  std::size_t groups = 1;       ///< layer groups

 private:
  friend class PagedKvCache;
  std::uint64_t cache_ = 0;  // the serial of the cache that made it; 0: none
  std::uint64_t step_ = 0;   // the step it belongs to
};

/// A sequence's dense keys and values, each `[1, kv_heads, len, head_dim]`.
struct PagedKv {
  Tensor keys;
  Tensor values;
};

/// What `add_sequence(prompt)` found: the new sequence and how many of the
/// prompt's first tokens it already holds (a multiple of page_size).
struct PrefixHit {
  SequenceId id{};
  std::size_t cached_tokens = 0;
};

/// The serving cache: the keys and values of many sequences that start, grow,
/// fork and finish independently, in one pool of pages of `page_size` tokens.
///
/// Storage: each layer's pages are one tensor `[num_pages, 2, page_size,
/// kv_heads, head_dim]` (NHD; HND swaps page_size and kv_heads), axis 1 being
/// keys then values: FlashInfer's single-tensor paged layout, allocated once
/// at construction (so the whole pool is in memory_stats from the start);
/// a slot's bytes are unspecified until written.
/// `pages(layer)` shares that storage, so a server hands it and a step's plan
/// to FlashInfer or to its own kernels without copying. Page p is one
/// contiguous block in both layouts. A page id names the same page in every layer.
///
/// Pages: a host free list (vLLM's block pool) hands out and takes back pages
/// in O(1); each page has a reference count, one per sequence holding it.
/// `fork` shares every page of a sequence; the partly filled last page of a
/// shared sequence is copied on its next write (copy on write, in
/// `begin_step`), so no sequence ever sees another's new tokens.
///
/// A step: `begin_step(ids, new_tokens)` reserves the slots of every listed
/// sequence's new tokens, all or nothing, and returns a PagedStepPlan; then per
/// layer `write(layer, plan, keys, values)` puts the new tokens in their slots
/// (one Backend::paged_write, no allocation, no synchronisation), and the
/// attention reads the pages through the plan's FlashInfer metadata.
///
/// Device page tables: each live sequence has a row of a resident block
/// table (`block_table()`, `[max_sequences, row_capacity]` int32) and a
/// length. A step sends only what changed, each listed sequence's row,
/// length and new token count and the ids of its new pages, in one
/// host-to-device copy, and one Backend::paged_build_step launch applies them
/// and builds the plan's metadata there; fork, prefix hits and evictions
/// copy the changed part of a row when they happen. Host work per step:
/// O(batch + new pages). The accounting kernel (`device_accounting`) reads
/// the same tables.
///
/// Errors: an unknown or released id is Hook, naming it; every mutator
/// validates first and changes nothing when it throws (OutOfMemory included).
///
/// Stream: the pages, plans and results are allocated, and every copy and
/// kernel runs, on the cache's stream (given at construction; it must belong
/// to the cache's device). Tensors passed in must be ready in that stream's
/// order. No call waits for the device.
///
/// Prefix caching: a full page is named by a hash chain over the token ids
/// (see `add_sequence(prompt)`); a new prompt shares the longest named
/// prefix; named pages no sequence holds stay cached until a step needs
/// their space, least recently released first (vLLM's automatic prefix caching).
///
/// Hybrid models: `config.layer_kinds` gives each layer a kind (full
/// attention, a sliding window, sinks and a window); layers of one kind form
/// groups with their own page tables over the one pool (PagedLayerGroups,
/// vLLM's hybrid allocator), and one step serves every group. When a step
/// lists a sequence of L tokens, each window layer group (window w, s sinks)
/// gives back the pages of its whole columns whose tokens are all at least s
/// and below L + 1 - w (L - w when it gets no new token, whose decode query
/// is its last token; no query of the step or later attends them): its
/// table names the null page there (config.pool_pages()). A step reserves
/// every group's pages for all its new tokens (a prefill's queries attend
/// them), so a long prefill holds a window group's pages until the
/// sequence's next step. Prefix caching (add_sequence(prompt)) shares
/// nothing in a cache with window layers (its pages are not named).
///
/// Limitation: a window group knows what it dropped only by whole columns
/// (those naming the null page). An eviction that keeps a dropped token and
/// packs it into one page beside tokens the group holds makes the group take
/// it for held (its bytes unspecified), so a later eviction that moves it
/// into the window is not refused (fuzz/regressions/paged_hybrid/
/// eviction_brings_a_packed_dropped_token_into_the_window). Only evictions
/// that keep dropped tokens can reach it (evict_to_window with more sinks
/// than the layer kind has, evict_heavy_hitters, trim_to past the window).
///
/// Thread safety: const queries may run concurrently; mutation needs exclusive
/// access. Move-only: the pages and their bookkeeping are one; a moved-from
/// cache may only be destroyed or assigned to.
class PagedKvCache {
 public:
  /// Validates `config` (its errors), then allocates every layer's pages.
  /// Error: OutOfMemory (nothing stays allocated); Backend for an unusable device.
  explicit PagedKvCache(const PagedKvConfig& config, Device device = Device::cpu(), Stream stream = {});
  PagedKvCache(PagedKvCache&&) noexcept;
  PagedKvCache& operator=(PagedKvCache&&) noexcept;
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;
  ~PagedKvCache();

  /// The config as given.
  const PagedKvConfig& config() const noexcept { return config_; }
  /// Pages of the pool (config().pages()).
  std::size_t num_pages() const noexcept { return num_pages_; }
  Device device() const noexcept { return device_; }
  Stream stream() const noexcept { return stream_; }

  /// The layer's page tensor (shares the cache's storage): storage tensor
  /// layer_groups().layer_slot[layer], shared by the layers of the same
  /// slot in every group (each page belongs to one group at a time); with
  /// one group, the layer's own. Error: Hook `layer 4 out of range (layers=4)`.
  Tensor pages(std::size_t layer) const;
  /// The layer's pages as the Backend's descriptor. Error: Hook as `pages`.
  PagedPages page_layout(std::size_t layer) const;
  /// How the layers are grouped (config().layer_groups()).
  const PagedLayerGroups& layer_groups() const noexcept { return groups_; }

  /// A new empty sequence, with a row of each group's page tables. O(groups). Error:
  /// OutOfMemory (`add_sequence: 1024 sequences alive, the most the page
  /// tables hold (max_sequences)`). Its pages are named as they fill when each
  /// step gives its token ids (see begin_step), with salt 0.
  SequenceId add_sequence();
  /// A new sequence holding the longest cached prefix of `prompt`: page by
  /// page, the page named by the hash chain (parent page's name, `salt`,
  /// the page's page_size token ids; XXH3-128) of the prompt's next full
  /// page, used by another sequence or cached, is shared (reference count + 1;
  /// a cached one becomes used), until the first page not found. At most
  /// (prompt.size() - 1) / page_size pages are taken, so that at least one
  /// prompt token is left to compute (its logits are the next token's).
  /// `salt` (a LoRA or tenant id) is part of every name: prompts of different
  /// salts share nothing. The caller then runs a step with the remaining
  /// prompt.size() - cached_tokens tokens and their ids. Counts lookups and
  /// hits in prefix_stats(). Copies nothing on the device.
  /// Complexity: O(prompt.size()) hashing on the host, O(1) per page.
  PrefixHit add_sequence(std::span<const std::int32_t> prompt, std::uint64_t salt = 0);
  /// A new sequence sharing every page of `id` (reference counts + 1), with
  /// its length and positions. Allocates no device memory. O(pages of id).
  /// Error: Hook `fork: unknown sequence 7 (never added, or released)`.
  SequenceId fork(SequenceId id);
  /// Drops `id`; its pages whose reference count reaches 0 return to the
  /// pool: named (full) ones to the prefix cache, newest last so that a
  /// sequence's later pages are evicted before its earlier ones (as vLLM),
  /// the others to the free list. O(pages of id). Error: Hook as `fork`.
  void release(SequenceId id);

  std::size_t num_sequences() const noexcept { return sequences_.size(); }
  /// Tokens of `id`, reserved slots included. Error: Hook as `fork`.
  std::size_t length(SequenceId id) const;
  /// Page ids of `id` in `layer`'s group, in token order: token t is in page
  /// t / page_size at offset t % page_size (the null page for the dropped
  /// columns of a window layer). Error: Hook as `fork` (or for the layer).
  std::vector<std::int32_t> pages_of(SequenceId id, std::size_t layer = 0) const;
  /// Original position of every token of `id`, oldest first (0..length-1
  /// until an eviction drops some). Error: Hook as `fork`.
  std::vector<std::size_t> positions(SequenceId id) const;

  /// Reserves slots for `new_tokens[i]` new tokens of sequence `ids[i]` (each
  /// id at most once; a count of 0 lists the sequence in the metadata only),
  /// taking free pages first, then the least recently cached ones (evicting
  /// their names),
  /// copies on write the partly filled last page of a listed shared sequence
  /// that gets new tokens (a fresh page; the page's bytes copied for every
  /// layer with Backend::copy_device_to_device; when every holder of that page
  /// writes in this step, the last of them in id order keeps it), advances
  /// the lengths, and returns the step's plan. All or nothing.
  /// Errors: Shape (`begin_step: 3 ids and 2 new token counts`), Hook (unknown
  /// id), Config (`begin_step: sequence 4 listed twice (entries 0 and 2)`;
  /// more than 2147483647 new tokens or pages: the metadata is int32),
  /// OutOfMemory (`begin_step: needs 5 pages (1 copied on write), 2 free and 1 cached of 8`,
  /// or the plan's buffer); on any error nothing changed for any sequence.
  /// Errors also Config (`begin_step: sequence 2 of 30 tokens cannot grow by
  /// 3: at most 32 tokens (max_sequence_len)`).
  /// Window layer groups give back the pages no query attends any more (see
  /// the class comment) before the step's pages are taken, so they serve
  /// this step (the OutOfMemory message then counts them: `2 free (+3
  /// window layers give back)`).
  /// Complexity: O(groups x (batch + log pages) + fresh and dropped pages)
  /// on the host (+ O(new tokens) hashing with token ids), one allocation,
  /// one host-to-device copy of 16 x groups x batch + 4 + 8 x (fresh and
  /// dropped pages) bytes, one Backend::paged_build_step launch, group_size
  /// device copies per page copied on write.
  PagedStepPlan begin_step(std::span<const SequenceId> ids, std::span<const std::size_t> new_tokens,
                           std::span<const std::int32_t> token_ids = {});

  /// Writes the plan's new tokens into `layer`'s pages: token t of `keys`
  /// and `values` (each `[total_new, kv_heads, head_dim]`, the pages' dtype,
  /// on the cache's device) goes to slot `plan.slot_mapping[t]`. One
  /// Backend::paged_write (none when total_new is 0), no allocation, no
  /// synchronisation. Errors: Hook (layer), Config (`write: the plan is of
  /// step 3, the cache is at step 4`, a plan of another cache, dtype, device,
  /// undefined tensor), Shape (`write: keys [4, 2, 8] must be [5, 2, 8]
  /// ([total_new, kv_heads, head_dim])`).
  void write(std::size_t layer, const PagedStepPlan& plan, const Tensor& keys, const Tensor& values);

  /// `layer`'s part of `plan.slot_mapping`, I64 `[total_new]` (a view).
  /// Error: Hook (layer), Config (a plan of another cache).
  Tensor slot_mapping(const PagedStepPlan& plan, std::size_t layer) const;
  /// `layer`'s part of `plan.kv_indices`, I32 `[total_pages]` (a view): with
  /// kv_indptr and kv_last_page_len, the layer's FlashInfer metadata (and
  /// window_left = kind window - 1 for a window layer). Errors as slot_mapping.
  Tensor kv_indices(const PagedStepPlan& plan, std::size_t layer) const;

  /// The dense keys and values of `id` in `layer` (new tensors, each `[1,
  /// kv_heads, length, head_dim]`): one upload of its page ids and one
  /// Backend::paged_gather; the tokens a window layer dropped read the null
  /// page, zeros (the cache zeroes it at construction). Errors: Hook (id or layer), OutOfMemory.
  PagedKv gather(SequenceId id, std::size_t layer) const;

  /// Decode attention of the plan's sequences in `layer` (the reference
  /// kernel, Backend::paged_decode_attention, reading the plan's kv_indptr,
  /// kv_indices and kv_last_page_len): `queries` `[batch, qo_heads,
  /// head_dim]` in the pages' dtype on the cache's device, one query token
  /// per sequence, qo_heads a multiple of kv_heads (query head q reads kv
  /// head q / (qo_heads / kv_heads)); `scale` multiplies every score, 0
  /// meaning 1/sqrt(head_dim). Returns a new F32 `[batch, qo_heads,
  /// head_dim]` device tensor: softmax(scale q.k) v over each sequence's
  /// tokens (new tokens included: write them first) that the layer's kind
  /// attends from the last one (PagedLayerKind), zeros for an empty one.
  /// Errors: Hook (layer), Config (`decode_attention: the plan is of
  /// another cache (or of none)`, `... is of step 2, the cache is at step
  /// 3`; queries' dtype; `decode_attention: head_dim 8192 is above 4096` (the
  /// kernel's limit, kPagedAttentionMaxHeadDim); a scale that is not finite),
  /// Shape (rank, shape, qo_heads not a multiple of kv_heads), Device,
  /// OutOfMemory. One allocation, one launch, no synchronisation.
  /// O(batch x qo_heads x tokens x head_dim).
  Tensor decode_attention(std::size_t layer, const PagedStepPlan& plan, const Tensor& queries,
                          float scale = 0.0f) const;

  /// The accounting kernel (Backend::paged_accounting): the counters of the
  /// sequences `ids` and of the pool, computed on the device from the
  /// resident page tables alone, equal to sequence_stats and pool_stats
  /// (the tests check it after every kind of operation). One allocation,
  /// one host-to-device copy of the ids' rows and the live rows, one launch;
  /// no synchronisation. Errors: Hook (unknown id), OutOfMemory.
  PagedDeviceAccounting device_accounting(std::span<const SequenceId> ids) const;

  /// The device page tables' block table of `layer`'s group, int32 `[max_sequences,
  /// row_capacity]` (a view of the cache's storage, vLLM's block_tables):
  /// row `row_of(id)` holds the page ids of `id` in token order (pages_of(id, layer)), its first
  /// ceil(length / page_size) columns meaningful; kept up to date in stream
  /// order by every mutator (the rows of a step by its build launch).
  /// Error: Hook (layer).
  Tensor block_table(std::size_t layer = 0) const;
  /// The page-table row of `id`. O(1). Error: Hook as `fork`.
  std::size_t row_of(SequenceId id) const;

  /// The pool's counters, exact, on the host. O(1).
  PagedPoolStats pool_stats() const noexcept;
  /// Per-sequence eviction: each keeps the tokens its policy (eviction.hpp)
  /// names, in order, packed from the sequence's first slot so that the
  /// FlashInfer metadata of later steps describes them. Page by page: a new
  /// page whose tokens are one old page's first tokens in order is that old
  /// page, kept as it is, when it keeps all of that page's tokens (shared
  /// and named pages included, so dropping whole pages moves no byte) or
  /// fewer of a page no other sequence holds and no name names (so every
  /// holder of a page sees the same fill); the other kept tokens move on the device into
  /// fresh pages (one upload of their slots, one Backend::paged_move per
  /// layer); old pages that keep no token go back to the pool (named ones
  /// to the prefix cache). The sequence's later pages are no longer named
  /// (its tokens are no longer a prompt's prefix). `positions(id)` gives each
  /// kept token's original position; kept keys keep the rotation they were
  /// stored with. Invalidates the current step plan (its pages changed).
  /// Window layer groups compact the same way, the columns whose kept tokens
  /// they had all dropped naming the null page; a kept token that a window
  /// layer dropped must stay out of its window after the eviction (trim_to
  /// keeps a suffix, so a window without sinks always does).
  /// Return false, changing nothing, when every token is kept.
  /// Errors: Hook (unknown id); OutOfMemory (`trim_to: sequence 3 needs 2
  /// fresh pages to compact into, 1 free and 0 cached of 8`, or the slot
  /// list); Config (`evict_to_window: sequence 3: layers of window 8 dropped
  /// token 2, which would be in their window after it`); on any error nothing changed.
  /// Complexity: O(length of id) on the host; bytes moved: the moved
  /// tokens' keys and values in every layer (at most one page's worth for a
  /// suffix, none when it starts on a page boundary).

  /// Keeps the last `max_tokens` tokens of `id` (eviction::last).
  bool trim_to(SequenceId id, std::size_t max_tokens);
  /// StreamingLLM: keeps the first `sinks` and the last `window` tokens of
  /// `id` (eviction::sinks_and_window).
  bool evict_to_window(SequenceId id, std::size_t sinks, std::size_t window);
  /// H2O: keeps the last `window` tokens of `id` and the `heavy` older ones
  /// with the largest `scores` (eviction::heavy_hitters; ranked on the device
  /// by Backend::top_k_head_mean, only the chosen indices come back: the one
  /// wait). `scores` `[length(id)]`, F32, F16 or BF16 on the cache's device,
  /// ranks the tokens in cache order, one ranking for every layer (a page
  /// holds the same tokens in every layer). Ties keep the older token; NaN
  /// ranks below every number. Errors also Shape (`evict_heavy_hitters:
  /// scores must be [12], got [2, 12]`), Config (dtype, undefined), Device.
  bool evict_heavy_hitters(SequenceId id, const Tensor& scores, std::size_t heavy, std::size_t window);

  /// The prefix cache's counters. O(1).
  PrefixCacheStats prefix_stats() const noexcept;
  /// The counters of `id`. O(1), O(pages of id) with window layers. Error: Hook as `fork`.
  PagedSequenceStats sequence_stats(SequenceId id) const;
  /// Bytes of the tokens held, over every layer: pool_stats().tokens x
  /// slot_bytes() (as KVCache's: excludes the free slots of used pages).
  std::size_t memory_usage() const noexcept;
  /// Bytes the cache holds on the device, all allocated at construction: the
  /// page tensors (the whole pool) and the page tables (config().table_bytes()).
  std::size_t memory_reserved() const noexcept;

  /// Writes the whole cache to the safetensors file `path`: per storage
  /// tensor l (layer l with one group; see pages()) `blocks.{l}.attn.kv_pages`, the used and cached pages only
  /// (state().stored_pages(), in that order) as `[stored, 2, page_size,
  /// kv_heads, head_dim]` (HND: kv_heads before page_size) in the pages'
  /// dtype, so the file holds (used + cached) x page_bytes() bytes of pages;
  /// then the state() as I64 tensors: `pool.references` [pages],
  /// `pool.free_pages`, `pool.cached_pages`, `pool.named_pages` and
  /// `pool.page_names` [names, 2] (low, high), `tables.free_rows`,
  /// per sequence in id order `sequences.ids`, `.lengths`, `.next_positions`,
  /// `.rows`, `.naming` (0 or 1), `.salts`, `.chains` [n, 2], and the packed
  /// lists `sequences.pages`, `.runs` [runs, 2] (begin, length) and
  /// `.tail_tokens` with their `.page_offsets`, `.run_offsets` and
  /// `.tail_offsets` [n + 1] (64-bit values bit-cast). Metadata:
  /// `micache.cache` = `PagedKvCache`, `micache.paged_format` =
  /// `micache-paged/2` (load also reads /1, written before layer kinds),
  /// `micache.config` (JSON: every PagedKvConfig field, dtype
  /// "f32"/"f16"/"bf16", layout "nhd"/"hnd", layer_kinds [[window, sinks],
  /// ...]), `micache.next_id`,
  /// `micache.step`, `micache.lookup_tokens`, `micache.hit_tokens`,
  /// `micache.hit_pages`, `micache.evictions`. One device-to-host copy per
  /// run of consecutive stored pages per layer (waits for the stream).
  /// Error: Io (an earlier file at `path` is left as it was).
  void save(const std::string& path) const;
  /// Reads a file written by `save` onto `device`, in a cache working on
  /// `stream`, through `restore`: the loaded cache continues exactly as the
  /// saved one would. Errors: Io `{path}: ...` for a malformed file, another
  /// class's file, another format version, or a state `restore` rejects (its
  /// message); OutOfMemory, Backend as the constructor.
  static PagedKvCache load(const std::string& path, Device device = Device::cpu(), Stream stream = {});

  /// The cache's whole state but the page bytes, on the host: sequences in
  /// increasing id order, the pool, the free rows, the counters. O(pages +
  /// the sequences' pages, runs and tail tokens); no device work.
  PagedKvState state() const;
  /// The restore hook: a cache of `config` in `state`, whose pages
  /// state.stored_pages()[i] hold `stored[l]`'s row i (one per storage tensor) (each `[stored,
  /// 2, page_size, kv_heads, head_dim]`, HND swapping page_size and kv_heads,
  /// config.dtype, on `device`; the other pages' bytes are unspecified).
  /// Validates everything before allocating: the config (its errors), then
  /// the state, each failure Config `restore: ...` naming what is wrong (a
  /// count that is not the number of holders, a page or row out of range or
  /// listed twice, a page in no state or in two, a free page with a name, a
  /// cached one without, names shared, ids not increasing or not below
  /// next_id, a length above max_sequence_len or not matching the pages,
  /// position runs that do not increase or count the tokens, tail tokens that
  /// do not fit the last page), then `stored` (Shape for a count or shape,
  /// Config for the dtype, Device). Then allocates the cache (OutOfMemory),
  /// copies the stored pages into place (one device-to-device copy per run
  /// of consecutive pages per layer) and uploads every sequence's row of the
  /// device page tables. O(pages + the sequences' pages and runs).
  static PagedKvCache restore(const PagedKvConfig& config, const PagedKvState& state, std::span<const Tensor> stored,
                              Device device = Device::cpu(), Stream stream = {});

 private:
  struct Sequence {
    std::vector<std::vector<std::int32_t>> pages;  // per layer group, aligned: ceil(length / page_size) each
    std::size_t length = 0;
    PositionRuns positions;
    std::size_t next_position = 0;
    std::uint64_t listed = 0;  // the begin_step call that last listed it (duplicate check)
    // The prefix chain: whether its pages are still named as they fill, its
    // salt, the name of its last full page (zero before the first), and the
    // token ids of its partly filled last page.
    bool naming = true;
    std::uint64_t salt = 0;
    std::array<std::uint64_t, 2> chain{};
    std::vector<std::int32_t> tail_tokens;
    std::int32_t row = -1;  // of the device page tables
  };
  struct StepEntry;
  struct Reservation;
  struct Compaction;

  Sequence& sequence_or_throw(SequenceId id, const char* operation);
  const Sequence& sequence_or_throw(SequenceId id, const char* operation) const;
  Reservation reserve(std::span<const SequenceId> ids, std::span<const std::size_t> new_tokens,
                      std::span<const std::int32_t> token_ids);
  void hash_new_pages(StepEntry& entry, std::span<const std::int32_t> tokens);
  void fill_inputs(const Reservation& reservation);
  PagedStepPlan build_plan(const Reservation& reservation);
  void copy_on_write(const Reservation& reservation);
  void commit(Reservation& reservation) noexcept;
  void check_plan(const PagedStepPlan& plan) const;
  PagedTables tables() const noexcept;
  SequenceId adopt(Sequence&& s, const char* operation);
  void upload_row(const Sequence& s, std::size_t first_column);
  std::size_t group_of(std::size_t layer) const;
  PagedPages storage_layout(std::size_t slot) const noexcept;
  std::size_t first_held_column(const std::vector<std::int32_t>& pages, const PagedLayerKind& kind) const;
  void retain_pages(const Sequence& s);
  Compaction plan_compaction(SequenceId id, const Sequence& s, const KeptTokens& kept, const char* operation) const;
  bool compact(SequenceId id, const KeptTokens& kept, const char* operation);
  void check_tokens(const Tensor& tensor, std::size_t tokens, const char* what) const;

  PagedKvConfig config_;
  Device device_;
  Stream stream_;
  Backend* backend_ = nullptr;
  std::size_t num_pages_ = 0;
  PagedLayerGroups groups_;
  std::int32_t null_page_ = -1;  // config_.pool_pages() with window layers, else -1
  std::size_t slot_bytes_ = 0;   // config_.slot_bytes()
  std::size_t page_bytes_ = 0;   // config_.page_bytes()
  std::vector<Tensor> pages_;    // per storage slot (group_size of them)
  std::size_t sequence_len_ = 0;  // config_.sequence_len()
  std::size_t row_capacity_ = 0;  // config_.row_capacity()
  Tensor tables_;                 // I32: the block table [max_sequences, row_capacity_], then the row lengths
  std::vector<std::int32_t> free_rows_;  // a stack: back() is the next row handed out
  std::unique_ptr<detail::PagePool> pool_;
  std::unordered_map<SequenceId, Sequence> sequences_;
  std::uint64_t next_id_ = 0;
  std::uint64_t serial_ = 0;        // this cache's, for its plans
  std::uint64_t step_ = 0;          // successful begin_step calls
  std::uint64_t listing_ = 0;       // begin_step calls
  std::size_t tokens_ = 0;          // filled slots in used pages, each page's once
  std::uint64_t lookup_tokens_ = 0;
  std::uint64_t hit_tokens_ = 0;
  std::uint64_t hit_pages_ = 0;
  std::vector<std::byte> staging_;  // the host side of a plan's inputs, reused
};

}  // namespace micache
