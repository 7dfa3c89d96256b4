// Every call the README lists as graph-capturable, captured on a stream of
// its own (the default stream cannot be captured at all), instantiated,
// replayed, and compared bit for bit with the same call made directly:
// KVCache::append within reserved capacity, and the Backend kernel ops with
// caller-owned outputs (their scratch becomes graph memory nodes). A call
// that synchronised the host or read device memory back would fail
// cudaStreamEndCapture. Skipped, saying why, without a device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "../quantiser_tables.hpp"
#include "../test_support.hpp"
#include "micache/micache.hpp"

namespace micache::testing {
namespace {

// [1, 2, tokens, 8] F32 on `device` and `stream`, filled from `seed`.
Tensor tokens_on(std::size_t tokens, std::uint32_t seed, Device device, Stream stream) {
  return Tensor::from_host(random_values(2 * tokens * 8, seed), {1, 2, tokens, 8}, DType::F32, device, stream);
}

// Keys of tokens [0, first) from `seed_a` then [first, first + second) from `seed_b`, [1, 2, tokens, 8] row-major.
std::vector<float> concatenated(std::size_t first, std::uint32_t seed_a, std::size_t second, std::uint32_t seed_b) {
  const std::vector<float> a = random_values(2 * first * 8, seed_a);
  const std::vector<float> b = random_values(2 * second * 8, seed_b);
  std::vector<float> out;
  for (std::size_t head = 0; head < 2; ++head) {
    out.insert(out.end(), a.begin() + static_cast<std::ptrdiff_t>(head * first * 8),
               a.begin() + static_cast<std::ptrdiff_t>((head + 1) * first * 8));
    out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(head * second * 8),
               b.begin() + static_cast<std::ptrdiff_t>((head + 1) * second * 8));
  }
  return out;
}

TEST(GraphCapture, KVCacheAppendWithinCapacityIsCapturedThenReplayed) {
  MICACHE_REQUIRE_CUDA();
  const Device device = Device::cuda(0);
  const OwnedStream stream(device);
  KVCache cache(1, stream.get());
  cache.append(0, tokens_on(4, 1, device, stream.get()), tokens_on(4, 2, device, stream.get()));
  cache.reserve(16);
  const Tensor keys = tokens_on(1, 3, device, stream.get());
  const Tensor values = tokens_on(1, 4, device, stream.get());
  stream.synchronize();

  auto* native = static_cast<cudaStream_t>(stream.get().handle);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(native, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cache.append(0, keys, values);
  ASSERT_EQ(cudaStreamEndCapture(native, &graph), cudaSuccess);
  std::size_t nodes = 0;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 1u);  // one copy kernel for keys and values together
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, native), cudaSuccess);
  stream.synchronize();

  EXPECT_EQ(cache.seq_len(), 5u);
  expect_same_bits(cache.keys(0).to_host_f32(), concatenated(4, 1, 1, 3));
  expect_same_bits(cache.values(0).to_host_f32(), concatenated(4, 2, 1, 4));
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

// Device memory of `bytes` bytes on cuda:0's backend, from host `values`.
class DeviceBytes {
 public:
  DeviceBytes(Backend& backend, const void* values, std::size_t bytes)
      : backend_(backend), bytes_(bytes), data_(backend.allocate(bytes)) {
    backend.copy_host_to_device(data_, values, bytes, Stream{});
    backend.synchronize(Stream{});
  }
  explicit DeviceBytes(Backend& backend, std::size_t bytes)
      : backend_(backend), bytes_(bytes), data_(backend.allocate(bytes)) {
    cudaMemset(data_, 0xff, bytes);
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  ~DeviceBytes() { backend_.deallocate(data_, bytes_); }
  void* get() const { return data_; }
  std::size_t size() const { return bytes_; }

 private:
  Backend& backend_;
  std::size_t bytes_;
  void* data_;
};

// Device memory a captured call writes: its address and size.
struct Region {
  void* data;
  std::size_t bytes;
  Region(const DeviceBytes& buffer) : data(buffer.get()), bytes(buffer.size()) {}
  Region(void* at, std::size_t size) : data(at), bytes(size) {}
  Region(const conformance::DeviceBuffer& buffer, std::size_t size) : data(buffer.at()), bytes(size) {}
};

std::vector<std::uint8_t> read_region(const Region& region) {
  std::vector<std::uint8_t> out(region.bytes);
  EXPECT_EQ(cudaMemcpy(out.data(), region.data, region.bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

// Runs `op(stream)` directly, reads `outputs`, poisons them, captures
// `op(stream)` into a graph (expecting the capture to succeed), replays it
// and expects the same bytes.
void expect_capture_replays_direct_call(const std::function<void(Stream)>& op, const std::vector<Region>& outputs) {
  const OwnedStream stream(Device::cuda(0));
  op(stream.get());
  stream.synchronize();
  std::vector<std::vector<std::uint8_t>> direct;
  for (const Region& out : outputs) direct.push_back(read_region(out));
  for (const Region& out : outputs) ASSERT_EQ(cudaMemset(out.data, 0xff, out.bytes), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  auto* native = static_cast<cudaStream_t>(stream.get().handle);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(native, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  op(stream.get());
  ASSERT_EQ(cudaStreamEndCapture(native, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, native), cudaSuccess);
  stream.synchronize();
  for (std::size_t i = 0; i < outputs.size(); ++i) EXPECT_EQ(read_region(outputs[i]), direct[i]) << "output " << i;
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

// A [heads, rows, cols] F32 pattern on cuda:0 and the view of all of it.
struct Pattern {
  std::size_t heads, rows, cols;
  std::vector<float> values;
  DeviceBytes data;

  Pattern(Backend& backend, std::size_t h, std::size_t r, std::size_t c)
      : heads(h),
        rows(r),
        cols(c),
        values(random_softmax_rows(h * r, c, 5)),
        data(backend, values.data(), values.size() * sizeof(float)) {}

  HeadMeanView view() const {
    HeadMeanView v;
    v.data = data.get();
    v.dtype = DType::F32;
    v.head_stride = rows * cols;
    v.n_rows = rows;
    v.row_stride = cols;
    v.n_cols = cols;
    v.heads.count = static_cast<std::uint32_t>(heads);
    return v;
  }
};

TEST(GraphCapture, HeadMeanOfOneRowAndOfManyRows) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const Pattern pattern(backend, 32, 64, 8192);
  DeviceBytes all(backend, 64 * 8192 * sizeof(float));
  DeviceBytes row(backend, 8192 * sizeof(float));
  HeadMeanView one = pattern.view();
  one.n_rows = 1;
  expect_capture_replays_direct_call(
      [&](Stream s) {
        backend.head_mean(pattern.view(), static_cast<float*>(all.get()), s);
        backend.head_mean(one, static_cast<float*>(row.get()), s);
      },
      {all, row});
}

TEST(GraphCapture, ColumnSumsOverSeveralChunks) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const Pattern pattern(backend, 8, 3 * kColumnSumChunkRows + 1, 1000);
  DeviceBytes out(backend, 1000 * sizeof(float));
  expect_capture_replays_direct_call(
      [&](Stream s) { backend.head_mean_column_sums(pattern.view(), static_cast<float*>(out.get()), s); }, {out});
}

TEST(GraphCapture, TopKOfASplitRowBySelectAndBySort) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const Pattern pattern(backend, 32, 2, 8192);
  HeadMeanView one = pattern.view();
  one.n_rows = 1;  // split over segments, then merged: scratch allocated in the graph
  struct Output {
    std::size_t k;
    DeviceBytes indices;
    DeviceBytes weights;
  };
  Output warp{5, DeviceBytes(backend, 5 * 4), DeviceBytes(backend, 5 * 4)};
  Output select{100, DeviceBytes(backend, 2 * 100 * 4), DeviceBytes(backend, 2 * 100 * 4)};
  Output sort{2000, DeviceBytes(backend, 2 * 2000 * 4), DeviceBytes(backend, 2 * 2000 * 4)};
  expect_capture_replays_direct_call(
      [&](Stream s) {
        backend.top_k_head_mean(one, warp.k, static_cast<std::int32_t*>(warp.indices.get()),
                                static_cast<float*>(warp.weights.get()), s);
        for (Output* out : {&select, &sort}) {
          backend.top_k_head_mean(pattern.view(), out->k, static_cast<std::int32_t*>(out->indices.get()),
                                  static_cast<float*>(out->weights.get()), s);
        }
      },
      {warp.indices, warp.weights, select.indices, select.weights, sort.indices, sort.weights});
}

TEST(GraphCapture, ConvertAndCopyTokens) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const std::vector<float> values = random_values(4 * 64 * 128, 9, -2.0f, 2.0f);
  const DeviceBytes source(backend, values.data(), values.size() * sizeof(float));
  DeviceBytes halves(backend, values.size() * 2);
  DeviceBytes ring(backend, values.size() * sizeof(float));
  TokenCopy copy;
  copy.src[0] = source.get();
  copy.dst[0] = ring.get();
  copy.planes = 4;
  copy.tokens = 50;
  copy.token_bytes = 128 * sizeof(float);
  copy.src_capacity = 64;
  copy.src_start = 40;
  copy.dst_capacity = 64;
  copy.dst_start = 30;
  expect_capture_replays_direct_call(
      [&](Stream s) {
        backend.convert(source.get(), DType::F32, halves.get(), DType::BF16, values.size(), s);
        backend.copy_tokens(copy, s);
      },
      {halves, ring});
}

// A paged_write of 5 tokens (one slot negative, one the pool's last) into F32
// NHD pages, then a gather of pages 0 and 3 (slots 3 and 63 among theirs):
// one launch each, no allocation. The pages start as 0xff bytes, as the
// poison before the replay leaves them, so the slots the write skips compare too.
TEST(GraphCapture, PagedWriteThenGather) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const std::size_t heads = 4, dim = 128, page_size = 16, num_pages = 4, tokens = 5;
  const std::vector<float> inputs = random_values(2 * tokens * heads * dim, 31, -2.0f, 2.0f);
  const DeviceBytes input(backend, inputs.data(), inputs.size() * sizeof(float));
  const std::vector<std::int64_t> slots = {3, 63, -1, 17, 40};
  const DeviceBytes slot_mapping(backend, slots.data(), slots.size() * sizeof(std::int64_t));
  const std::vector<std::int32_t> ids = {0, 3};
  const DeviceBytes page_ids(backend, ids.data(), ids.size() * sizeof(std::int32_t));
  DeviceBytes pages(backend, num_pages * 2 * page_size * heads * dim * sizeof(float));
  DeviceBytes keys(backend, heads * 2 * page_size * dim * sizeof(float));
  DeviceBytes values(backend, heads * 2 * page_size * dim * sizeof(float));

  PagedWrite write;
  write.pages = {.data = pages.get(),
                 .dtype = DType::F32,
                 .layout = PagedLayout::Nhd,
                 .num_pages = num_pages,
                 .page_size = page_size,
                 .kv_heads = heads,
                 .head_dim = dim};
  write.keys = input.get();
  write.values = static_cast<const float*>(input.get()) + tokens * heads * dim;
  write.token_stride = heads * dim;
  write.tokens = tokens;
  write.slot_mapping = static_cast<const std::int64_t*>(slot_mapping.get());
  PagedGather gather;
  gather.pages = write.pages;
  gather.page_ids = static_cast<const std::int32_t*>(page_ids.get());
  gather.tokens = 2 * page_size;
  gather.keys = keys.get();
  gather.values = values.get();
  expect_capture_replays_direct_call(
      [&](Stream s) {
        backend.paged_write(write, s);
        backend.paged_gather(gather, s);
      },
      {pages, keys, values});
}

// A paged_decode_attention of 3 requests (20 tokens ending mid-page, none, 32
// ending on a page boundary) over BF16 HND pages, 8 query heads in GQA groups
// of 4, with lse: one launch, no allocation.
TEST(GraphCapture, PagedDecodeAttention) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const std::size_t kv_heads = 2, qo_heads = 8, dim = 128, page_size = 16, num_pages = 5, batch = 3;
  std::vector<std::uint16_t> page_elements(num_pages * 2 * page_size * kv_heads * dim);
  const std::vector<float> page_values = random_values(page_elements.size(), 41, -2.0f, 2.0f);
  for (std::size_t i = 0; i < page_elements.size(); ++i) page_elements[i] = f32_to_bf16(page_values[i]);
  std::vector<std::uint16_t> query_elements(batch * qo_heads * dim);
  const std::vector<float> query_values = random_values(query_elements.size(), 42, -1.0f, 1.0f);
  for (std::size_t i = 0; i < query_elements.size(); ++i) query_elements[i] = f32_to_bf16(query_values[i]);
  const DeviceBytes pages(backend, page_elements.data(), page_elements.size() * sizeof(std::uint16_t));
  const DeviceBytes queries(backend, query_elements.data(), query_elements.size() * sizeof(std::uint16_t));
  const std::vector<std::int32_t> indptr = {0, 2, 2, 4}, indices = {3, 0, 4, 1}, last = {4, 0, 16};
  const DeviceBytes kv_indptr(backend, indptr.data(), indptr.size() * sizeof(std::int32_t));
  const DeviceBytes kv_indices(backend, indices.data(), indices.size() * sizeof(std::int32_t));
  const DeviceBytes kv_last_page_len(backend, last.data(), last.size() * sizeof(std::int32_t));
  DeviceBytes out(backend, batch * qo_heads * dim * sizeof(float));
  DeviceBytes lse(backend, batch * qo_heads * sizeof(float));

  PagedDecodeAttention attention;
  attention.pages = {.data = pages.get(),
                     .dtype = DType::BF16,
                     .layout = PagedLayout::Hnd,
                     .num_pages = num_pages,
                     .page_size = page_size,
                     .kv_heads = kv_heads,
                     .head_dim = dim};
  attention.queries = queries.get();
  attention.query_stride = qo_heads * dim;
  attention.batch = batch;
  attention.qo_heads = qo_heads;
  attention.kv_indptr = static_cast<const std::int32_t*>(kv_indptr.get());
  attention.kv_indices = static_cast<const std::int32_t*>(kv_indices.get());
  attention.kv_last_page_len = static_cast<const std::int32_t*>(kv_last_page_len.get());
  attention.scale = 0.08838834764831845f;
  attention.out = static_cast<float*>(out.get());
  attention.lse = static_cast<float*>(lse.get());
  expect_capture_replays_direct_call([&](Stream s) { backend.paged_decode_attention(attention, s); }, {out, lse});
}

// The device page tables' three ops in one graph: a step's build over two
// rows (one update each), the accounting of both, and a compaction move of
// 3 tokens. The build's updates are absolute, so a replay writes the same
// tables and metadata again.
TEST(GraphCapture, PagedBuildStepAccountingAndMove) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const std::size_t rows = 2, capacity = 4, page_size = 4, num_pages = 6, heads = 2, dim = 64;
  std::vector<std::int32_t> tables_host = {0, 1, 2, 3, 4, 5, 0, 0, 6, 5};  // block table [2, 4], lengths [2]
  DeviceBytes tables(backend, tables_host.data(), tables_host.size() * sizeof(std::int32_t));
  const std::vector<std::int32_t> inputs_host = {0, 1,  // entry rows
                                                 9, 8,  // lengths after the step
                                                 3, 2,  // new tokens
                                                 0, 1, 2,  // update indptr
                                                 2, 1,  // update columns
                                                 3, 2};  // update pages
  const DeviceBytes inputs(backend, inputs_host.data(), inputs_host.size() * sizeof(std::int32_t));
  DeviceBytes slots(backend, 5 * sizeof(std::int64_t));
  DeviceBytes metadata(backend, (3 + 5 + 2 + 3) * sizeof(std::int32_t));
  const auto* in = static_cast<const std::int32_t*>(inputs.get());
  auto* meta = static_cast<std::int32_t*>(metadata.get());
  auto* table = static_cast<std::int32_t*>(tables.get());
  const PagedTables t{.block_table = table, .lengths = table + rows * capacity, .rows = rows,
                      .row_capacity = capacity, .page_size = page_size};
  const PagedStepBuild build{.tables = t, .batch = 2, .entry_rows = in, .entry_lengths = in + 2,
                             .entry_new = in + 4, .update_indptr = in + 6, .update_cols = in + 9,
                             .update_pages = in + 11, .slot_mapping = static_cast<std::int64_t*>(slots.get()),
                             .kv_indptr = meta, .kv_indices = meta + 3, .kv_last_page_len = meta + 8,
                             .qo_indptr = meta + 10};
  DeviceBytes scratch(backend, kPagedAccountingScratchBytesPerPage * num_pages);
  DeviceBytes counters(backend, (2 * kPagedSequenceFields + kPagedPoolFields) * sizeof(std::int64_t));
  auto* counts = static_cast<std::int64_t*>(counters.get());
  const PagedAccounting accounting{.tables = t, .num_pages = num_pages, .page_bytes = 4096, .rows = in,
                                   .batch = 2, .live_rows = in, .live = 2,
                                   .page_refs = static_cast<std::uint32_t*>(scratch.get()),
                                   .page_fill = static_cast<std::uint32_t*>(scratch.get()) + num_pages,
                                   .per_sequence = counts, .pool = counts + 2 * kPagedSequenceFields};
  const std::size_t page_floats = 2 * page_size * heads * dim;
  const std::vector<float> page_values = random_values(num_pages * page_floats, 51, -2.0f, 2.0f);
  DeviceBytes pages(backend, page_values.data(), page_values.size() * sizeof(float));
  const std::vector<std::int64_t> moves = {1, 2, 6, 20, 21, 22};  // slots 1, 2, 6 to page 5's first three
  const DeviceBytes move_slots(backend, moves.data(), moves.size() * sizeof(std::int64_t));
  PagedMove move;
  move.pages = {.data = pages.get(), .dtype = DType::F32, .layout = PagedLayout::Nhd, .num_pages = num_pages,
                .page_size = page_size, .kv_heads = heads, .head_dim = dim};
  move.src_slots = static_cast<const std::int64_t*>(move_slots.get());
  move.dst_slots = move.src_slots + 3;
  move.tokens = 3;
  expect_capture_replays_direct_call(
      [&](Stream s) {
        backend.paged_build_step(build, s);
        backend.paged_accounting(accounting, s);
        backend.paged_move(move, s);
      },
      // The tables and the move's source pages are inputs too: only the
      // metadata, the counters and the move's destination page are poisoned.
      {slots, metadata, counters, Region(static_cast<float*>(pages.get()) + 5 * page_floats, page_floats * 4)});
}

// Encode, score, attend and decode over one ring, all in one graph: 300
// tokens of 4 key heads and 4 value heads (dim 100: p = 128, odd tail), 8
// query heads in GQA groups of 2; the prepared queries, scores and partials
// are scratch allocated and freed inside the graph.
TEST(GraphCapture, CompressedRecordOps) {
  MICACHE_REQUIRE_CUDA();
  Backend& backend = backend_for(Device::cuda(0));
  const std::size_t heads = 4, tokens = 300, capacity = 320, dim = 100, query_heads = 8;
  const conformance::QuantiserTables key_tables = conformance::make_tables(dim, 4, 32, heads, 21);
  const conformance::QuantiserTables value_tables = conformance::make_tables(dim, 3, 0, heads, 22);
  const conformance::DeviceTables key_device(backend, key_tables);
  const conformance::DeviceTables value_device(backend, value_tables);
  const std::size_t key_bytes = heads * capacity * key_tables.layout.record_bytes;
  const std::size_t value_bytes = heads * capacity * value_tables.layout.record_bytes;
  const conformance::DeviceBuffer key_records(backend, conformance::random_bytes(key_bytes, 1));
  const conformance::DeviceBuffer value_records(backend, conformance::random_bytes(value_bytes, 2));
  const RecordRing keys = key_device.ring(key_records, heads, capacity, 250);
  const RecordRing values = value_device.ring(value_records, heads, capacity, 250);
  const std::vector<float> inputs = Gaussian(3).vector(2 * heads * tokens * dim);
  const DeviceBytes input(backend, inputs.data(), inputs.size() * sizeof(float));
  const std::vector<float> query_values = Gaussian(4).vector(query_heads * dim);
  const DeviceBytes queries(backend, query_values.data(), query_values.size() * sizeof(float));
  DeviceBytes scores(backend, query_heads * tokens * sizeof(float));
  DeviceBytes outputs(backend, query_heads * dim * sizeof(float));
  DeviceBytes decoded(backend, heads * tokens * dim * sizeof(float));

  RecordEncode encode_keys{keys, 0, tokens, input.get(), DType::F32, tokens * dim, dim};
  RecordEncode encode_values{
      values, 0, tokens, static_cast<float*>(input.get()) + heads * tokens * dim, DType::F32, tokens * dim, dim};
  RecordQuery query;
  query.keys = keys;
  query.tokens = tokens;
  query.queries = queries.get();
  query.query_heads = query_heads;
  query.group_size = 2;
  query.qjl = true;
  query.scale = 0.1f;
  expect_capture_replays_direct_call(
      [&](Stream s) {
        backend.encode_records(encode_keys, s);
        backend.encode_records(encode_values, s);
        backend.score_records(query, static_cast<float*>(scores.get()), s);
        backend.attend_records(query, values, static_cast<float*>(outputs.get()), s);
        backend.decode_records(values, tokens, static_cast<float*>(decoded.get()), s);
      },
      {Region(key_records, key_bytes), Region(value_records, value_bytes), scores, outputs, decoded});
}

}  // namespace
}  // namespace micache::testing
