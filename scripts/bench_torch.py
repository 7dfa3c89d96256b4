#!/usr/bin/python3
"""PyTorch on the operations and sizes of bench/ (micache_bench), for scripts/bench_table.py.

Run with Debian's interpreter and Debian's PyTorch, not a pyenv or venv python:

    apt-get install -y python3-torch          # as root
    /usr/bin/python3 scripts/bench_torch.py [--device cpu|cuda|all] [--min-time S] [--repeats N]

Prints one JSON line per measurement:

    {"name", "impl", "device", "dtype", "heads", "seq", "k", "median_s", "bytes"}

`name`, `device` ("cpu", "cuda:0"), `dtype` ("bf16", "f32"), `heads`, `seq` and `k`
(null where there is none) are micache_bench's name fields (bench/bench_report.hpp),
so rows join on them; `bytes` is the same fewest-bytes-moved figure micache_bench
reports for the operation. `impl` is "torch", or "torch_static" for the
preallocated-cache decode step (the ring buffer's PyTorch equivalent).

Timing: time.perf_counter around a batch of calls on the CPU (torch.cuda.Event
pairs on CUDA), the batch grown until it lasts --min-time; median_s is the median
over --repeats batches of the time per call. CPU runs use --threads threads (default
1, as micache's CPU backend). Peak memory on the CPU stays under about 3 GB: the
largest tensors are a [1, 32, 4096, 4096] F32 pattern (2 GiB) and the KV trim's
32 layers of 8192 tokens (1 GiB) plus its 6144-token copies (0.75 GiB), never together.
The paged decode write's pool is 2.4 GB of pages of which it touches 256 slots.
"""

import argparse
import gc
import itertools
import json
import statistics
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}
ELEMENT_BYTES = {"bf16": 2, "f32": 4}

# Attention patterns [1, heads, seq, seq]: every query on ALL_ROW_SIZES, the
# one-row query also on the device's largest size (as bench/bench_attention.cpp).
ALL_ROW_SIZES = [(12, 512), (32, 2048)]
ONE_ROW_SIZE = {"cpu": (32, 4096), "cuda": (32, 8192)}
TOP_K = [1, 8, 32]

# KV geometry of bench/bench_kv.cpp: 32 layers x [1, 8, seq, 128] BF16.
LAYERS, KV_HEADS, HEAD_DIM = 32, 8, 128
TOKEN_BYTES = KV_HEADS * HEAD_DIM * 2  # one of K or V, one layer
DECODE_CONTEXT, PREFILL, TRIM_FROM, TRIM_TO = 1024, 2048, 8192, 6144


class Timer:
    """Median seconds per call of fn() on one device."""

    def __init__(self, device, min_time, repeats):
        self.device, self.min_time, self.repeats = device, min_time, repeats

    def batch(self, fn, n):
        if self.device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(n):
                fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) * 1e-3
        begin = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - begin

    def median(self, fn):
        fn()  # warm-up: allocator, kernels
        n = 1
        while True:
            elapsed = self.batch(fn, n)
            if elapsed >= self.min_time or n >= 1 << 20:
                break
            n = min(n * 10, max(n + 1, int(n * 1.5 * self.min_time / max(elapsed, 1e-9))))
        samples = [elapsed / n] + [self.batch(fn, n) / n for _ in range(self.repeats - 1)]
        return statistics.median(samples)


def emit(name, impl, device, dtype, heads, seq, k, median_s, nbytes):
    record = {"name": name, "impl": impl, "device": device_name(device), "dtype": dtype, "heads": heads,
              "seq": seq, "k": k, "median_s": median_s, "bytes": nbytes}
    print(json.dumps(record), flush=True)


def device_name(device):
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def make_pattern(heads, seq, dtype, device):
    """Values in [0, 2 / seq), filled one head at a time (no full-size F32 temporary)."""
    generator = torch.Generator(device=device).manual_seed(2463534242)
    pattern = torch.empty(1, heads, seq, seq, dtype=DTYPES[dtype], device=device)
    for h in range(heads):
        pattern[0, h].copy_(torch.rand(seq, seq, generator=generator, device=device) * (2.0 / seq))
    return pattern


def bench_attention(timer, device, dtype, heads, seq, one_row_only):
    p = make_pattern(heads, seq, dtype, device)
    element = ELEMENT_BYTES[dtype]
    pattern_bytes = heads * seq * seq * element
    rows = itertools.count()

    # One-row head mean: reads heads x seq elements, writes seq floats.
    median = timer.median(lambda: p[0, :, next(rows) % seq, :].float().mean(0))
    emit("row_query", "torch", device, dtype, heads, seq, None, median, heads * seq * element + seq * 4)
    if not one_row_only:
        # Every row: reads the pattern once, writes seq^2 floats.
        median = timer.median(lambda: p[0].float().mean(0))
        emit("head_mean_all", "torch", device, dtype, heads, seq, None, median, pattern_bytes + seq * seq * 4)
        # Top-k of every row: reads the pattern once, writes seq x k (index, weight) pairs.
        for k in TOP_K:
            median = timer.median(lambda: torch.topk(p[0].float().mean(0), k, dim=-1))
            emit("top_k_all", "torch", device, dtype, heads, seq, k, median, pattern_bytes + seq * k * 8)
    del p


def kv_tokens(tokens, device):
    return torch.rand(1, KV_HEADS, tokens, HEAD_DIM, device=device).to(torch.bfloat16)


def bench_kv(timer, device):
    # Decode step at 1024 tokens: torch.cat of the held K and V of each layer with
    # one new token (results dropped, so every step starts from 1024 tokens).
    keys = [kv_tokens(DECODE_CONTEXT, device) for _ in range(LAYERS)]
    values = [kv_tokens(DECODE_CONTEXT, device) for _ in range(LAYERS)]
    token = kv_tokens(1, device)

    def decode_cat():
        for k, v in zip(keys, values):
            torch.cat([k, token], dim=2)
            torch.cat([v, token], dim=2)

    decode_bytes = LAYERS * 2 * TOKEN_BYTES * 2
    emit("kv_decode_append", "torch", device, "bf16", KV_HEADS, DECODE_CONTEXT, None, timer.median(decode_cat),
         decode_bytes)

    # The same step into preallocated buffers (a static cache): one slice copy per K and V per layer.
    key_buffers = [torch.cat([k, torch.empty_like(k)], dim=2) for k in keys]
    value_buffers = [torch.cat([v, torch.empty_like(v)], dim=2) for v in values]
    del keys, values

    def decode_static():
        for k, v in zip(key_buffers, value_buffers):
            k[:, :, DECODE_CONTEXT:DECODE_CONTEXT + 1].copy_(token)
            v[:, :, DECODE_CONTEXT:DECODE_CONTEXT + 1].copy_(token)

    emit("kv_decode_append", "torch_static", device, "bf16", KV_HEADS, DECODE_CONTEXT, None,
         timer.median(decode_static), decode_bytes)
    del key_buffers, value_buffers

    # Prefill: a 2048-token block concatenated into an empty cache, K and V, every layer.
    prompt = kv_tokens(PREFILL, device)
    empty = prompt[:, :, :0]

    def prefill():
        return [torch.cat([empty, prompt], dim=2) for _ in range(2 * LAYERS)]

    emit("kv_prefill", "torch", device, "bf16", KV_HEADS, PREFILL, None, timer.median(prefill),
         LAYERS * 2 * PREFILL * TOKEN_BYTES * 2)
    del prompt, empty
    gc.collect()

    # Trim 8192 tokens to the last 6144, as a new contiguous tensor per K and V per layer.
    full = [kv_tokens(TRIM_FROM, device) for _ in range(2 * LAYERS)]

    def trim():
        return [t[:, :, -TRIM_TO:, :].contiguous() for t in full]

    emit("kv_trim", "torch", device, "bf16", KV_HEADS, TRIM_FROM, None, timer.median(trim),
         LAYERS * 2 * TRIM_TO * TOKEN_BYTES * 2)
    del full
    gc.collect()


# Paged geometry of bench/bench_paged.cpp: [num_pages, 2, 16, 8, 128] BF16 pages (FlashInfer's NHD layout).
PAGE_SIZE, PAGED_BATCH, PAGED_PREFILL = 16, 256, 32768


def paged_decode_slots():
    """The slot of each of the 256 decode tokens (sequence i holds 600 + (i * 2654435761) % 3401 tokens, its
    pages consecutive) and the pages of the pool (each sequence's pages after the step)."""
    slots, first_page = [], 0
    for i in range(PAGED_BATCH):
        length = 600 + (i * 2654435761) % 3401
        slots.append((first_page + length // PAGE_SIZE) * PAGE_SIZE + length % PAGE_SIZE)
        first_page += (length + 1 + PAGE_SIZE - 1) // PAGE_SIZE
    return slots, first_page


def bench_paged(timer, device):
    # vLLM's reshape_and_cache in PyTorch: token t's key and value go to slot slot_mapping[t] of the paged cache
    # (page slot // 16, offset slot % 16), for one decode step of 256 sequences and a 32k-token prefill. "torch"
    # assigns through advanced indexing into the key and value views kv[:, 0] and kv[:, 1]; "torch_index_copy"
    # runs index_copy_ on the pages viewed as [num_pages * 2 * 16, 8, 128] rows. Bytes as PagedWrite's: keys and
    # values read and written, the int64 slots read.
    decode_slots, decode_pages = paged_decode_slots()
    for slots, num_pages in ((decode_slots, decode_pages),
                             (list(range(PAGED_PREFILL)), PAGED_PREFILL // PAGE_SIZE)):
        tokens = len(slots)
        kv = torch.empty(num_pages, 2, PAGE_SIZE, KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=device)
        key_cache, value_cache = kv[:, 0], kv[:, 1]
        rows = kv.view(num_pages * 2 * PAGE_SIZE, KV_HEADS, HEAD_DIM)
        keys = torch.rand(tokens, KV_HEADS, HEAD_DIM, device=device).to(torch.bfloat16)
        values = torch.rand(tokens, KV_HEADS, HEAD_DIM, device=device).to(torch.bfloat16)
        slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)

        def assign():
            page = torch.div(slot_mapping, PAGE_SIZE, rounding_mode="floor")
            offset = torch.remainder(slot_mapping, PAGE_SIZE)
            key_cache[page, offset] = keys
            value_cache[page, offset] = values

        def index_copy():
            row = torch.div(slot_mapping, PAGE_SIZE, rounding_mode="floor") * (2 * PAGE_SIZE) + torch.remainder(
                slot_mapping, PAGE_SIZE)
            rows.index_copy_(0, row, keys)
            rows.index_copy_(0, row + PAGE_SIZE, values)

        nbytes = 4 * tokens * KV_HEADS * HEAD_DIM * 2 + 8 * tokens
        for impl, fn in (("torch", assign), ("torch_index_copy", index_copy)):
            emit("paged_write", impl, device, "bf16", KV_HEADS, tokens, None, timer.median(fn), nbytes)
        del kv, key_cache, value_cache, rows, keys, values
        gc.collect()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="cpu, cuda (when available) or both (default)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch (default 0.2)")
    parser.add_argument("--repeats", type=int, default=3, help="batches per median (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda", 0))
    elif args.device == "cuda":
        parser.error(f"--device cuda, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")

    with torch.inference_mode():
        for device in devices:
            timer = Timer(device, args.min_time, args.repeats)
            for dtype in DTYPES:
                for heads, seq in ALL_ROW_SIZES:
                    bench_attention(timer, device, dtype, heads, seq, one_row_only=False)
                    gc.collect()
                heads, seq = ONE_ROW_SIZE[device.type]
                bench_attention(timer, device, dtype, heads, seq, one_row_only=True)
                gc.collect()
            bench_kv(timer, device)
            bench_paged(timer, device)


if __name__ == "__main__":
    main()
