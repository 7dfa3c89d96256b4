"""Per-call cost of micache from Python (issue 15), against numpy doing the same work from Python.

Two calls, on the geometries of the C++ benchmarks so that the same run of
``micache_bench`` gives the C++ side (bench/bench_attention.cpp row_query,
bench/bench_kv.cpp kv_decode_append):

- a one-row head-mean query, ``AttentionCache.attention_from_position_tensor``
  on an F32 pattern ``[1, 12, 512, 512]`` (the row of query q averaged over
  the 12 heads), against numpy's ``pattern[0, :, q, :].mean(axis=0)``;
- a KV decode step, ``KVCache.append`` of one BF16 token ``[1, 8, 1, 128]``
  to each of 32 layers holding 1,024 tokens (capacity reserved; a trim back
  to 1,024 tokens after each step, untimed), against numpy appending one F32
  token to each of 32 layers with ``np.concatenate`` (what Hugging Face's
  DynamicCache does with ``torch.cat``; numpy has no bfloat16).

Each figure is the median over ``--repeats`` runs of the mean of ``--calls``
calls (time.perf_counter), in microseconds. Usage:

    python python/bench/bench_overhead.py [--repeats 7] [--calls 2000]

prints one JSON object per benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np

import micache

HEADS, SEQ = 12, 512
LAYERS, KV_HEADS, HEAD_DIM, CONTEXT = 32, 8, 128, 1024


def per_call_us(call: Callable[[int], object], calls: int, repeats: int, after: Callable[[], None] | None = None) -> float:
    """The median over `repeats` of the mean time of `calls` calls of `call(i)`, µs; `after` runs untimed after each."""
    runs = []
    for _ in range(repeats):
        elapsed = 0.0
        for i in range(calls):
            start = time.perf_counter()
            call(i)
            elapsed += time.perf_counter() - start
            if after is not None:
                after()
        runs.append(elapsed / calls * 1e6)
    return statistics.median(runs)


def row_query(calls: int, repeats: int) -> dict[str, object]:
    rng = np.random.default_rng(15)
    pattern = rng.random((1, HEADS, SEQ, SEQ), dtype=np.float32)
    cache = micache.AttentionCache()
    cache.push(pattern)  # read in place: the same memory numpy reads below
    micache_us = per_call_us(lambda i: cache.attention_from_position_tensor(0, i % SEQ), calls, repeats)
    numpy_us = per_call_us(lambda i: pattern[0, :, i % SEQ, :].mean(axis=0), calls, repeats)
    return {
        "name": f"row_query/python/cpu/dtype:f32/heads:{HEADS}/seq:{SEQ}",
        "micache_us": round(micache_us, 3),
        "numpy_us": round(numpy_us, 3),
        "cxx_peer": f"row_query/micache/cpu/dtype:f32/heads:{HEADS}/seq:{SEQ}",
    }


def kv_decode_append(calls: int, repeats: int) -> dict[str, object]:
    rng = np.random.default_rng(16)
    prefix = micache.from_dlpack(rng.random((1, KV_HEADS, CONTEXT, HEAD_DIM), dtype=np.float32)).to_dtype(
        micache.DType.BF16
    )
    token = micache.from_dlpack(rng.random((1, KV_HEADS, 1, HEAD_DIM), dtype=np.float32)).to_dtype(micache.DType.BF16)
    cache = micache.KVCache(LAYERS)
    for layer in range(LAYERS):
        cache.append(layer, prefix, prefix)
    cache.reserve(2 * CONTEXT)

    def step(_: int) -> None:
        for layer in range(LAYERS):
            cache.append(layer, token, token)

    micache_us = per_call_us(step, calls, repeats, after=lambda: cache.trim_to(CONTEXT))

    keys = [rng.random((1, KV_HEADS, CONTEXT, HEAD_DIM), dtype=np.float32) for _ in range(LAYERS)]
    values = [k.copy() for k in keys]
    one = rng.random((1, KV_HEADS, 1, HEAD_DIM), dtype=np.float32)
    layers = {"keys": keys, "values": values}

    def numpy_step(_: int) -> None:
        for layer in range(LAYERS):
            layers["keys"][layer] = np.concatenate([layers["keys"][layer], one], axis=2)
            layers["values"][layer] = np.concatenate([layers["values"][layer], one], axis=2)

    def numpy_trim() -> None:
        for name in ("keys", "values"):
            layers[name] = [t[:, :, -CONTEXT:, :] for t in layers[name]]

    numpy_us = per_call_us(numpy_step, calls, repeats, after=numpy_trim)
    return {
        "name": f"kv_decode_append/python/cpu/dtype:bf16/heads:{KV_HEADS}/seq:{CONTEXT}",
        "micache_us": round(micache_us, 3),
        "numpy_f32_us": round(numpy_us, 3),
        "cxx_peer": f"kv_decode_append/micache/cpu/dtype:bf16/heads:{KV_HEADS}/seq:{CONTEXT}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    for bench in (row_query, kv_decode_append):
        print(json.dumps(bench(args.calls, args.repeats)))


if __name__ == "__main__":
    main()
