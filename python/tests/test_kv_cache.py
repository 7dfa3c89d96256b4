"""KVCache: ring-buffer appends, trims, evictions with original positions, files."""

from __future__ import annotations

import numpy as np
import pytest

import micache


def tokens(start: int, count: int) -> np.ndarray:
    """[batch=1, kv_heads=2, count, head_dim=4] whose every element of token t is start + t."""
    values = np.arange(start, start + count, dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(values[None, None, :, None], (1, 2, count, 4)))


@pytest.fixture
def kv() -> micache.KVCache:
    """Two layers of 6 tokens (0..5)."""
    cache = micache.KVCache(n_layers=2)
    for layer in range(2):
        cache.append(layer, tokens(0, 6), tokens(100, 6))
    return cache


def token_values(tensor: micache.Tensor) -> list[float]:
    return [float(v) for v in np.from_dlpack(tensor)[0, 0, :, 0]]


def test_append_grows_each_layer(kv) -> None:
    assert (len(kv), kv.n_layers, kv.seq_len(), kv.seq_len(1), kv.is_empty) == (2, 2, 6, 6, False)
    assert kv.capacity == 16
    assert kv.memory_usage == 2 * 2 * 6 * 2 * 4 * 4
    assert kv.memory_reserved == 2 * 2 * 16 * 2 * 4 * 4
    assert token_values(kv.keys(0)) == [0, 1, 2, 3, 4, 5]
    assert token_values(kv.values(1)) == [100, 101, 102, 103, 104, 105]


def test_an_empty_layer_has_no_keys() -> None:
    cache = micache.KVCache(3)
    assert cache.keys(0) is None and cache.values(2) is None
    assert cache.is_empty and cache.seq_len() == 0


def test_repr_shows_layers_length_and_bytes(kv) -> None:
    assert repr(kv) == "micache.KVCache(n_layers=2, seq_len=6, capacity=16, memory_usage=768)"


def test_trim_to_keeps_the_last_tokens_and_their_positions(kv) -> None:
    assert kv.trim_to(4)
    assert not kv.trim_to(4)
    assert token_values(kv.keys(0)) == [2, 3, 4, 5]
    assert (kv.first_position(0), kv.positions(1), kv.next_position(0)) == (2, [2, 3, 4, 5], 6)


def test_enforce_memory_limit_by_policy(kv) -> None:
    assert kv.enforce_memory_limit(0)
    assert kv.seq_len() == 4
    assert kv.enforce_memory_limit(0, policy=micache.EvictionPolicy.UntilUnderBudget)
    assert kv.seq_len() == 0


def test_evict_to_window_keeps_sinks_and_the_window(kv) -> None:
    assert kv.evict_to_window(sinks=1, window=2)
    assert kv.positions(0) == [0, 4, 5]
    assert token_values(kv.keys(1)) == [0, 4, 5]


def test_evict_heavy_hitters_keeps_the_best_scored_older_tokens(kv) -> None:
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.0, 0.0], np.float32)
    assert kv.evict_heavy_hitters(scores, heavy=2, window=2)
    assert kv.positions(0) == [1, 3, 4, 5]
    assert token_values(kv.values(0)) == [101, 103, 104, 105]


def test_scores_of_the_wrong_length_are_a_shape_error(kv) -> None:
    with pytest.raises(micache.ShapeError, match=r"^evict_heavy_hitters: scores must be \[6\] or \[2, 6\], got \[5\]$"):
        kv.evict_heavy_hitters(np.zeros(5, np.float32), 1, 1)


def test_reserve_and_shrink_to_fit(kv) -> None:
    kv.reserve(40)
    assert kv.capacity == 40
    kv.shrink_to_fit()
    assert kv.capacity == 6
    assert kv.memory_reserved == kv.memory_usage


def test_keys_of_a_dense_ring_share_the_caches_storage(kv) -> None:
    kv.shrink_to_fit()
    assert kv.keys(0).data_ptr == kv.keys(0).data_ptr


def test_set_layer_copies_the_tokens() -> None:
    cache = micache.KVCache(1)
    keys = tokens(0, 3)
    cache.set_layer(0, keys, keys)
    keys[...] = -1
    assert token_values(cache.keys(0)) == [0, 1, 2]


def test_restore_positions_sets_original_positions(kv) -> None:
    kv.restore_positions(0, [1, 2, 5, 6, 8, 9], 10)
    assert kv.positions(0) == [1, 2, 5, 6, 8, 9]
    assert kv.next_position(0) == 10


def test_a_head_count_that_does_not_extend_the_layer_is_a_shape_error(kv) -> None:
    wrong = np.zeros((1, 3, 1, 4), np.float32)
    with pytest.raises(micache.ShapeError, match=r"^append: new keys \[1, 3, 1, 4\] do not extend layer 0 \[1, 2, 6, 4\]$"):
        kv.append(0, wrong, wrong)


def test_a_layer_out_of_range_is_a_hook_error(kv) -> None:
    with pytest.raises(micache.HookError, match=r"^layer 5 out of range for KV cache$"):
        kv.append(5, tokens(0, 1), tokens(0, 1))


def test_clear_empties_every_layer(kv) -> None:
    kv.clear()
    assert kv.is_empty and kv.n_layers == 2


def test_save_and_load_keep_tokens_and_positions(tmp_path, kv) -> None:
    kv.evict_to_window(1, 2)
    path = tmp_path / "kv.safetensors"
    kv.save(path)
    loaded = micache.KVCache.load(path)
    assert loaded.positions(1) == [0, 4, 5]
    assert token_values(loaded.keys(0)) == [0, 4, 5]
    assert loaded.capacity == 3


def test_new_cache_is_candle_mis_constructor() -> None:
    assert micache.KVCache.new_cache(4).n_layers == 4
