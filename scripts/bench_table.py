#!/usr/bin/env python3
"""Joins micache_bench's Google Benchmark JSON with scripts/bench_torch.py's JSON lines into markdown tables.

    scripts/bench_table.py --bench bench.json [--bench more.json] [--torch torch.jsonl ...]

Benchmark names are op/impl/device/dtype:D/heads:H/seq:S[/k:K] (bench/bench_report.hpp);
rows join on (op, device, dtype, heads, seq, k). Times are the median aggregate when the
run had repetitions, else the single run. Bytes per call are Google Benchmark's
bytes_per_second (bench_report.hpp's report_bytes) times that time; torch lines carry
theirs. Columns: micache's median, its effective GB/s (decimal, bytes / median), that
as a share of the device copy roof of the same size, then each baseline's median and
its ratio baseline / micache (above 1: micache is faster). Standard library only.
"""

import argparse
import json
import sys

TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

OPERATIONS = {
    "row_query": "head mean, one row",
    "head_mean_all": "head mean, all rows",
    "top_k_all": "top-k of every row",
    "kv_decode_append": "KV decode step (1 token, 32 layers)",
    "kv_decode_append_8_threads": "KV decode step in 8 threads, each cache on its own stream",
    "kv_prefill": "KV prefill (32 layers)",
    "kv_trim": "KV trim to the last 6144 tokens, compacted (32 layers)",
    "kv_evict_heavy_hitters": "KV heavy-hitter eviction to 6144 tokens (32 layers)",
    "compressed_encode_token": "compressed encode (1 token)",
    "compressed_score": "compressed scores",
    "compressed_attention_output": "compressed attention output",
}

BASELINES = {
    "candle_way": "candle-mi way",
    "partial_sort": "std::partial_sort",
    "torch": "PyTorch",
    "torch_static": "PyTorch, preallocated",
    "cub_sort": "CUB sort + take k",
    "default_stream": "every cache on the default stream",
}

ROOF_IMPL = "copy_roof"
# Where an operation's copy roof is measured when not under its own name.
ROOF_OP = {"row_query": "pattern_copy", "head_mean_all": "pattern_copy", "top_k_all": "pattern_copy",
           "kv_evict_heavy_hitters": "kv_trim"}


def parse_name(name):
    """(op, impl, device, fields) from op/impl/device/key:value/...; other suffixes are ignored."""
    op, impl, device, *rest = name.split("/")
    fields = dict(part.split(":", 1) for part in rest if ":" in part)
    return op, impl, device, fields


def key_of(op, device, dtype, heads, seq, k):
    return (op, device, dtype, int(heads), int(seq), int(k) if k not in (None, "") else None)


def read_bench(path, results):
    with open(path) as f:
        report = json.load(f)
    runs = report["benchmarks"]
    has_median = {r["run_name"] for r in runs if r.get("aggregate_name") == "median"}
    for run in runs:
        name = run["run_name"]
        if name in has_median and run.get("aggregate_name") != "median":
            continue
        if name not in has_median and run.get("run_type") == "aggregate":
            continue
        op, impl, device, fields = parse_name(name)
        if "dtype" not in fields:
            continue
        seconds = run["real_time"] * TIME_UNIT_S[run["time_unit"]]
        nbytes = run.get("bytes_per_second", 0.0) * seconds
        key = key_of(op, device, fields["dtype"], fields["heads"], fields["seq"], fields.get("k"))
        results.setdefault(key, {})[impl] = (seconds, nbytes)


def read_torch(path, results):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            key = key_of(r["name"], r["device"], r["dtype"], r["heads"], r["seq"], r["k"])
            results.setdefault(key, {})[r.get("impl", "torch")] = (r["median_s"], r["bytes"])


def format_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(ratio):
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.3g}×"


def format_rate(rate):
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def gbps(seconds, nbytes):
    return nbytes / seconds / 1e9 if seconds > 0 and nbytes > 0 else None


def size_label(dtype, heads, seq, k):
    label = f"{dtype}, {heads} heads, seq {seq}"
    return label + (f", k = {k}" if k is not None else "")


def sort_key(key):
    op, device, dtype, heads, seq, k = key
    order = list(OPERATIONS)
    return (device, order.index(op) if op in order else len(order), op, dtype, heads, seq, k or 0)


def roof_of(results, key):
    op, device, dtype, heads, seq, _ = key
    roof = results.get((ROOF_OP.get(op, op), device, dtype, heads, seq, None), {}).get(ROOF_IMPL)
    return gbps(*roof) if roof else None


def table(results):
    keys = sorted((k for k, impls in results.items() if "micache" in impls), key=sort_key)
    present = [impl for impl in BASELINES if any(impl in results[k] for k in keys)]
    header = ["operation", "device", "size", "micache", "GB/s", "of roof"] + [BASELINES[i] for i in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        op, device, dtype, heads, seq, k = key
        impls = results[key]
        seconds, nbytes = impls["micache"]
        rate = gbps(seconds, nbytes)
        roof = roof_of(results, key)
        cells = [OPERATIONS.get(op, op), device, size_label(dtype, heads, seq, k), format_time(seconds),
                 format_rate(rate) if rate else "—", f"{rate / roof:.0%}" if rate and roof else "—"]
        for impl in present:
            if impl in impls:
                cells.append(f"{format_time(impls[impl][0])} ({format_ratio(impls[impl][0] / seconds)})")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def roof_table(results):
    keys = sorted((k for k, impls in results.items() if ROOF_IMPL in impls), key=sort_key)
    lines = ["| copy roof (device-to-device copy, read + write) | device | size | median | GB/s |",
             "|---|---|---|---|---|"]
    for key in keys:
        op, device, dtype, heads, seq, k = key
        seconds, nbytes = results[key][ROOF_IMPL]
        what = "pattern bytes" if op == "pattern_copy" else f"bytes of {op}"
        lines.append(f"| {what} | {device} | {size_label(dtype, heads, seq, k)} | {format_time(seconds)} | "
                     f"{format_rate(gbps(seconds, nbytes))} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="append", default=[], help="micache_bench JSON (--benchmark_out)")
    parser.add_argument("--torch", action="append", default=[], help="bench_torch.py JSON lines")
    args = parser.parse_args()
    if not args.bench:
        parser.error("at least one --bench file is needed")
    results = {}
    for path in args.bench:
        read_bench(path, results)
    for path in args.torch:
        read_torch(path, results)
    sys.stdout.write(table(results) + "\n")
    if any(ROOF_IMPL in impls for impls in results.values()):
        sys.stdout.write("\n" + roof_table(results) + "\n")


if __name__ == "__main__":
    main()
