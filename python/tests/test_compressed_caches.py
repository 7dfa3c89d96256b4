"""The bitpolar-style compressed caches and their device-tensor store."""

from __future__ import annotations

import numpy as np
import pytest

import micache


def vectors(rng: np.random.Generator, count: int, dim: int = 8) -> np.ndarray:
    return rng.standard_normal((count, dim)).astype(np.float32)


def test_config_takes_keywords_and_compares(config) -> None:
    assert (config.head_dim, config.bits, config.projections, config.seed) == (8, 4, 8, 3)
    assert (config.value_bits, config.estimator) == (0, micache.ScoreEstimator.Mse)
    assert config == micache.KvCacheConfig(head_dim=8, projections=8, seed=3)
    config.estimator = micache.ScoreEstimator.Qjl
    assert repr(config) == (
        "micache.KvCacheConfig(head_dim=8, bits=4, projections=8, seed=3, value_bits=0, estimator=ScoreEstimator.Qjl)"
    )
    config.validate()


def test_compressor_scores_match_the_exact_dot_product_roughly(rng, config) -> None:
    cache = micache.KvCacheCompressor(config)
    keys, values = vectors(rng, 16), vectors(rng, 16)
    for key, value in zip(keys, values):
        cache.push(key, value)
    query = vectors(rng, 1)[0]
    scores = np.array(cache.attention_scores(query))
    exact = keys @ query / np.sqrt(8)
    assert len(cache) == 16 and scores.shape == (16,)
    assert np.corrcoef(scores, exact)[0, 1] > 0.9
    assert len(cache.attention_output(query)) == 8
    assert np.array(cache.decode_keys()).shape == (16, 8)
    assert np.array(cache.decode_values()).shape == (16, 8)
    assert cache.compression_ratio > 1
    assert repr(cache) == "micache.KvCacheCompressor(num_heads=1, len=16, head_dim=8, bits=4, device=cpu)"


def test_evict_outside_window_keeps_the_last_tokens(rng, config) -> None:
    cache = micache.KvCacheCompressor(config)
    for key in vectors(rng, 5):
        cache.push(key, key)
    cache.evict_outside_window(2)
    assert len(cache) == 2
    cache.clear()
    assert cache.is_empty


def test_attention_over_an_empty_cache_is_an_empty_input_error(config) -> None:
    with pytest.raises(micache.EmptyInputError, match=r"^empty input: attention over an empty cache$"):
        micache.KvCacheCompressor(config).attention_output([0.5] * 8)


def test_multi_head_push_token_takes_arrays_and_lists(rng, config) -> None:
    cache = micache.MultiHeadKvCache(3, config)
    cache.push_token(vectors(rng, 3), vectors(rng, 3).tolist())
    assert (len(cache), cache.num_heads) == (1, 3)
    scores = cache.attention_scores(vectors(rng, 3))
    assert np.array(scores).shape == (3, 1)
    assert np.array(cache.attention_output(vectors(rng, 3))).shape == (3, 8)


def test_multi_head_head_views_one_head(rng, config) -> None:
    cache = micache.MultiHeadKvCache(2, config)
    cache.push_token(vectors(rng, 2), vectors(rng, 2))
    view = cache.head(1)
    assert len(view) == 1 and not view.is_empty
    assert np.array(view.decode_keys()).shape == (1, 8)
    assert cache.head(2) is None


def test_one_key_too_few_is_a_dimension_mismatch_error(config) -> None:
    cache = micache.MultiHeadKvCache(2, config)
    with pytest.raises(
        micache.DimensionMismatchError,
        match=r"^dimension mismatch: quantizer expects 2, got 1 \(keys: one vector per head\)$",
    ):
        cache.push_token([[0.5] * 8], [[0.5] * 8] * 2)
    assert cache.is_empty


def test_heads_takes_device_tensors_and_returns_tensors(rng, config) -> None:
    cache = micache.MultiHeadKvCache(2, config)
    heads = cache.heads
    heads.push(rng.standard_normal((2, 5, 8)).astype(np.float32), rng.standard_normal((2, 5, 8)).astype(np.float32))
    assert len(cache) == len(heads) == 5
    scores = heads.scores(rng.standard_normal((2, 8)).astype(np.float32))
    assert np.from_dlpack(scores).shape == (2, 5)
    assert np.from_dlpack(heads.attention_output(np.ones((2, 8), np.float32))).shape == (2, 8)
    assert np.from_dlpack(heads.decode_keys()).shape == (2, 5, 8)
    assert np.from_dlpack(heads.decode_values(1)).shape == (5, 8)
    assert np.from_dlpack(heads.head_scores(0, np.ones((1, 8), np.float32))).shape == (1, 5)
    assert heads.memory_usage == 5 * 2 * (heads.key_record_bytes + heads.value_record_bytes)
    assert heads.table_bytes > 0 and heads.memory_reserved >= heads.memory_usage


def test_non_finite_tensor_input_is_found_by_the_device_scan(config) -> None:
    keys = np.ones((2, 8), np.float32)
    keys[1, 3] = np.inf
    with pytest.raises(micache.NonFiniteInputError):
        micache.CompressedHeads(2, config).push(keys, np.ones((2, 8), np.float32))


def test_records_round_trip_through_assign_records(rng, config) -> None:
    source = micache.CompressedHeads(2, config)
    source.push(rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((2, 3, 8)).astype(np.float32))
    key_records, value_records = source.records()
    target = micache.CompressedHeads(2, config)
    target.assign_records(key_records, value_records)
    np.testing.assert_array_equal(np.from_dlpack(target.decode_keys()), np.from_dlpack(source.decode_keys()))
    target.keep_last(1)
    assert len(target) == 1


def test_gqa_groups_query_heads(rng, config) -> None:
    cache = micache.GqaKvCache(2, 6, config)
    assert (cache.num_kv_heads, cache.num_query_heads, cache.group_size) == (2, 6, 3)
    cache.push_token(vectors(rng, 2), vectors(rng, 2))
    assert np.array(cache.attention_scores(vectors(rng, 6))).shape == (6, 1)
    assert np.array(cache.attention_output(vectors(rng, 6))).shape == (6, 8)
    assert cache.kv_head(1) is not None and cache.kv_head(2) is None


def test_gqa_llama3_builders() -> None:
    config = micache.KvCacheConfig(head_dim=16, projections=4)
    assert micache.GqaKvCache.llama3_8b(config).group_size == 4
    assert micache.GqaKvCache.llama3_70b(config).num_query_heads == 64


def test_gqa_counts_that_do_not_divide_are_a_dimension_mismatch_error(config) -> None:
    with pytest.raises(
        micache.DimensionMismatchError,
        match=r"^dimension mismatch: quantizer expects 3, got 2 \(num_query_heads 8 is not a multiple of num_kv_heads 3\)$",
    ):
        micache.GqaKvCache(3, 8, config)


def test_sliding_window_keeps_the_last_window_size_tokens(rng, config) -> None:
    cache = micache.SlidingWindowKvCache(1, 2, 3, config)
    for _ in range(5):
        cache.push_token(vectors(rng, 1), vectors(rng, 1))
    assert (len(cache), cache.window_len, cache.total_tokens_seen, cache.window_size) == (3, 3, 5, 3)
    assert (cache.num_kv_heads, cache.num_query_heads, cache.group_size) == (1, 2, 2)
    assert np.array(cache.attention_scores(vectors(rng, 2))).shape == (2, 3)
    assert np.array(cache.attention_output(vectors(rng, 2))).shape == (2, 8)
    assert cache.compression_ratio > 1
    cache.clear()
    assert cache.is_empty and cache.total_tokens_seen == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda c: micache.KvCacheCompressor(c),
        lambda c: micache.MultiHeadKvCache(2, c),
        lambda c: micache.GqaKvCache(2, 4, c),
        lambda c: micache.SlidingWindowKvCache(2, 4, 8, c),
    ],
    ids=["KvCacheCompressor", "MultiHeadKvCache", "GqaKvCache", "SlidingWindowKvCache"],
)
def test_every_compressed_cache_round_trips_through_a_file(tmp_path, rng, config, make) -> None:
    cache = make(config)
    heads = 1 if isinstance(cache, micache.KvCacheCompressor) else 2
    for _ in range(3):
        if heads == 1:
            cache.push(vectors(rng, 1)[0], vectors(rng, 1)[0])
        else:
            cache.push_token(vectors(rng, heads), vectors(rng, heads))
    path = tmp_path / "compressed.safetensors"
    cache.save(path)
    loaded = type(cache).load(path)
    assert len(loaded) == 3
    query = vectors(rng, 1)[0] if heads == 1 else vectors(rng, 2 if isinstance(cache, micache.MultiHeadKvCache) else 4)
    assert loaded.attention_scores(query) == cache.attention_scores(query)


def test_sliding_window_restore_replaces_the_window(rng, config) -> None:
    source = micache.MultiHeadKvCache(1, config)
    for _ in range(2):
        source.push_token(vectors(rng, 1), vectors(rng, 1))
    window = micache.SlidingWindowKvCache(1, 1, 4, config)
    window.restore(*source.heads.records(), total_tokens_seen=7)
    assert (window.window_len, window.total_tokens_seen) == (2, 7)


def test_compressed_heads_describe_themselves(config) -> None:
    heads = micache.CompressedHeads(2, config)
    assert (heads.num_heads, heads.config, heads.device, heads.stream) == (
        2,
        config,
        micache.Device.cpu(),
        micache.Stream(),
    )
    heads.reserve(32)
    assert heads.is_empty and heads.memory_reserved > 0
    assert repr(heads) == "micache.CompressedHeads(num_heads=2, len=0, head_dim=8, bits=4, device=cpu)"
    heads.clear()
    assert heads.memory_reserved == 0


def test_a_head_view_scores_its_head_alone(rng, config) -> None:
    cache = micache.MultiHeadKvCache(2, config)
    for _ in range(3):
        cache.push_token(vectors(rng, 2), vectors(rng, 2))
    queries = vectors(rng, 2)
    view = cache.head(1)
    assert view.attention_scores(queries[1]) == cache.attention_scores(queries)[1]
    assert np.array(view.decode_values()).shape == (3, 8)
    assert view.compression_ratio == cache.compression_ratio
    assert repr(view) == "micache.KvHeadView(len=3)"


def test_compressed_cache_reprs_name_their_heads(config) -> None:
    assert repr(micache.MultiHeadKvCache(2, config)) == (
        "micache.MultiHeadKvCache(num_heads=2, len=0, head_dim=8, bits=4, device=cpu)"
    )
    assert repr(micache.GqaKvCache(2, 4, config)) == (
        "micache.GqaKvCache(num_kv_heads=2, len=0, head_dim=8, bits=4, device=cpu, num_query_heads=4)"
    )
    assert repr(micache.SlidingWindowKvCache(2, 4, 8, config)) == (
        "micache.SlidingWindowKvCache(num_kv_heads=2, len=0, head_dim=8, bits=4, device=cpu, num_query_heads=4, "
        "window_size=8, total_tokens_seen=0)"
    )
