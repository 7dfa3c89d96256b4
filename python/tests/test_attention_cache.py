"""AttentionCache: head-mean queries over pushed patterns, host and tensor forms."""

from __future__ import annotations

import numpy as np
import pytest

import micache


def test_push_counts_layers(attention: micache.AttentionCache) -> None:
    assert (len(attention), attention.n_layers, attention.is_empty) == (2, 2, False)
    assert len(attention.patterns) == 2
    assert micache.AttentionCache().is_empty


def test_get_layer_is_none_past_the_last_layer(attention: micache.AttentionCache) -> None:
    assert attention.get_layer(1).shape == (2, 3, 4, 4)
    assert attention.get_layer(2) is None


def test_repr_shows_layers_shape_dtype_and_device(attention: micache.AttentionCache) -> None:
    assert repr(attention) == "micache.AttentionCache(n_layers=2, shape=[2, 3, 4, 4], dtype=f32, device=cpu)"
    assert repr(micache.AttentionCache.with_capacity(4)) == "micache.AttentionCache(n_layers=0)"


def test_attention_from_position_is_the_head_mean_row(attention, pattern) -> None:
    row = attention.attention_from_position(0, 3)
    np.testing.assert_allclose(row, pattern[0, :, 3, :].mean(axis=0), rtol=1e-6)


def test_heads_and_batch_select_by_keyword(attention, pattern) -> None:
    row = attention.attention_from_position(1, 2, batch=1, heads=[2, 0])
    np.testing.assert_allclose(row, (2 * pattern)[1, [0, 2], 2, :].mean(axis=0), rtol=1e-6)


def test_attention_to_position_is_the_head_mean_column(attention, pattern) -> None:
    column = attention.attention_to_position(0, 1)
    np.testing.assert_allclose(column, pattern[0, :, :, 1].mean(axis=0), rtol=1e-6)


def test_top_attended_positions_rank_keys_by_weight(attention, pattern) -> None:
    top = attention.top_attended_positions(0, 3, 2)
    expected = np.argsort(-pattern[0, :, 3, :].mean(axis=0), kind="stable")[:2]
    assert [key for key, _ in top] == list(expected)
    assert attention.top_attended_positions(0, 3, 0) == []


def test_tensor_forms_equal_the_host_forms(attention) -> None:
    np.testing.assert_array_equal(
        np.from_dlpack(attention.attention_from_position_tensor(0, 3)), attention.attention_from_position(0, 3)
    )
    np.testing.assert_array_equal(
        np.from_dlpack(attention.attention_to_position_tensor(0, 1, heads=[1])),
        attention.attention_to_position(0, 1, heads=[1]),
    )


def test_top_attended_tensor_is_one_row(attention) -> None:
    top = attention.top_attended_tensor(0, 3, 2)
    assert top.indices.shape == (1, 2)
    assert [int(i) for i in np.from_dlpack(top.indices)[0]] == [k for k, _ in attention.top_attended_positions(0, 3, 2)]


def test_head_mean_is_the_whole_mean_pattern(attention, pattern) -> None:
    mean = np.from_dlpack(attention.head_mean(0, heads=[0, 1]))
    np.testing.assert_allclose(mean, pattern[0, :2].mean(axis=0), rtol=1e-6)


def test_attention_received_sums_each_keys_column(attention, pattern) -> None:
    received = np.from_dlpack(attention.attention_received(0))
    np.testing.assert_allclose(received, pattern[0].mean(axis=0).sum(axis=0), rtol=1e-5)


def test_top_attended_all_unpacks_into_indices_and_weights(attention) -> None:
    indices, weights = attention.top_attended_all(0, 2)
    assert indices.dtype is micache.DType.I32 and weights.dtype is micache.DType.F32
    assert np.from_dlpack(indices).shape == (4, 2)
    assert repr(attention.top_attended_all(0, 1)).startswith("micache.TopK(indices=[shape=[4, 1], dtype=i32")


def test_top_attended_all_with_k_0_is_a_config_error(attention) -> None:
    with pytest.raises(micache.ConfigError, match=r"^k must be at least 1 for a device top-k result$"):
        attention.top_attended_all(0, 0)


def test_a_head_selected_twice_is_a_config_error(attention) -> None:
    with pytest.raises(micache.ConfigError, match=r"^head 1 selected twice$"):
        attention.attention_from_position(0, 3, heads=[1, 1])


def test_a_batch_out_of_range_is_a_hook_error(attention) -> None:
    with pytest.raises(micache.HookError, match=r"^batch 2 out of range \(batch=2\)$"):
        attention.attention_from_position(0, 3, batch=2)


def test_float16_patterns_are_read_in_place(pattern) -> None:
    half = pattern.astype(np.float16)
    cache = micache.AttentionCache()
    cache.push(half)
    assert cache.get_layer(0).dtype is micache.DType.F16
    np.testing.assert_allclose(cache.attention_from_position(0, 0), half[0, :, 0].astype(np.float32).mean(0), rtol=1e-3)


def test_save_and_load_round_trip(tmp_path, attention) -> None:
    path = tmp_path / "attention.safetensors"
    attention.save(path)
    loaded = micache.AttentionCache.load(path, device=micache.Device.cpu())
    assert len(loaded) == 2
    np.testing.assert_array_equal(np.from_dlpack(loaded.get_layer(1)), np.from_dlpack(attention.get_layer(1)))


def test_the_cache_keeps_its_stream() -> None:
    owned = micache.OwnedStream()
    assert micache.AttentionCache(owned).stream == owned.get()
    assert micache.AttentionCache.with_capacity(2, stream=owned).stream == owned.get()
