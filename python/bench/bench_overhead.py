"""Per-call cost of micache from Python (issue 15), against numpy and PyTorch doing the same work from Python.

Two calls, on the geometries of the C++ benchmarks so that the same run of
``micache_bench`` gives the C++ side (bench/bench_attention.cpp row_query,
bench/bench_kv.cpp kv_decode_append):

- a one-row head-mean query, ``AttentionCache.attention_from_position_tensor``
  on an F32 pattern ``[1, 12, 512, 512]`` (the row of query q averaged over
  the 12 heads), against numpy's ``pattern[0, :, q, :].mean(axis=0)`` and
  PyTorch's ``pattern[0, :, q, :].mean(0)`` on the same memory;
- a KV decode step, ``KVCache.append`` of one BF16 token ``[1, 8, 1, 128]``
  to each of 32 layers holding 1,024 tokens (capacity reserved; a trim back
  to 1,024 tokens after each step, untimed), given as a micache tensor and
  as a torch tensor (DLPack import on each call), against numpy appending
  one F32 token to each of 32 layers with ``np.concatenate`` (numpy has no
  bfloat16), and PyTorch in BF16 the two ways Hugging Face's caches do it:
  ``torch.cat`` (DynamicCache: the layer is copied each step) and
  ``index_copy_`` into a preallocated tensor (StaticCache).

PyTorch's rows are left out, saying so, where torch is not installed.

Each figure is the median over ``--repeats`` runs of the mean of ``--calls``
calls (time.perf_counter), in microseconds. Usage:

    python python/bench/bench_overhead.py [--repeats 7] [--calls 2000]

prints one JSON object per benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np

import micache

try:
    import torch
except ImportError:
    torch = None

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
    result = {
        "name": f"row_query/python/cpu/dtype:f32/heads:{HEADS}/seq:{SEQ}",
        "micache_us": round(micache_us, 3),
        "numpy_us": round(numpy_us, 3),
        "cxx_peer": f"row_query/micache/cpu/dtype:f32/heads:{HEADS}/seq:{SEQ}",
    }
    if torch is not None:
        shared = torch.from_dlpack(pattern)
        result["torch_us"] = round(per_call_us(lambda i: shared[0, :, i % SEQ, :].mean(0), calls, repeats), 3)
    return result


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
    result: dict[str, object] = {
        "name": f"kv_decode_append/python/cpu/dtype:bf16/heads:{KV_HEADS}/seq:{CONTEXT}",
        "micache_us": round(micache_us, 3),
    }
    if torch is not None:
        torch_token = torch.from_dlpack(token)

        def step_from_torch(_: int) -> None:
            for layer in range(LAYERS):
                cache.append(layer, torch_token, torch_token)

        result["micache_torch_input_us"] = round(
            per_call_us(step_from_torch, calls, repeats, after=lambda: cache.trim_to(CONTEXT)), 3
        )

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

    result["numpy_f32_us"] = round(per_call_us(numpy_step, calls, repeats, after=numpy_trim), 3)
    if torch is not None:
        result.update(torch_decode_steps(torch.from_dlpack(prefix), torch_token, calls, repeats))
    result["cxx_peer"] = f"kv_decode_append/micache/cpu/dtype:bf16/heads:{KV_HEADS}/seq:{CONTEXT}"
    return result


def torch_decode_steps(prefix, token, calls: int, repeats: int) -> dict[str, float]:
    """PyTorch's two Hugging Face decode steps in BF16: torch.cat (DynamicCache) and index_copy_ (StaticCache), µs."""
    layers = {"keys": [prefix.clone() for _ in range(LAYERS)], "values": [prefix.clone() for _ in range(LAYERS)]}

    def cat_step(_: int) -> None:
        for name in ("keys", "values"):
            tensors = layers[name]
            for layer in range(LAYERS):
                tensors[layer] = torch.cat([tensors[layer], token], dim=-2)

    def cat_trim() -> None:
        for name in ("keys", "values"):
            layers[name] = [t[:, :, -CONTEXT:, :] for t in layers[name]]

    cat_us = per_call_us(cat_step, calls, repeats, after=cat_trim)

    static = {
        name: [torch.zeros(1, KV_HEADS, 2 * CONTEXT, HEAD_DIM, dtype=torch.bfloat16) for _ in range(LAYERS)]
        for name in ("keys", "values")
    }
    position = torch.tensor([CONTEXT])

    def static_step(_: int) -> None:
        for layer in range(LAYERS):
            static["keys"][layer].index_copy_(2, position, token)
            static["values"][layer].index_copy_(2, position, token)

    static_us = per_call_us(static_step, calls, repeats)
    return {"torch_cat_us": round(cat_us, 3), "torch_static_index_copy_us": round(static_us, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if torch is None:
        print("PyTorch is not installed: its rows are left out", file=sys.stderr)
    else:
        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    for bench in (row_query, kv_decode_append):
        print(json.dumps(bench(args.calls, args.repeats)))


if __name__ == "__main__":
    main()
