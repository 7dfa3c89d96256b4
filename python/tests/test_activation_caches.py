"""ActivationCache and FullActivationCache."""

from __future__ import annotations

import numpy as np
import pytest

import micache


@pytest.fixture
def residuals(rng: np.random.Generator) -> list[np.ndarray]:
    """Three layers of [seq_len=5, d_model=4] residual streams."""
    return [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]


def test_activation_cache_wraps_its_layers_without_a_copy(residuals) -> None:
    cache = micache.ActivationCache.new_cache(residuals)
    assert len(cache) == cache.n_layers == 3
    assert cache.get_layer(2).data_ptr == residuals[2].ctypes.data
    assert cache.get_layer(3) is None
    assert repr(cache) == "micache.ActivationCache(n_layers=3, shape=[5, 4], dtype=f32, device=cpu)"


def test_activation_cache_push_and_to_f32_vecs(residuals) -> None:
    cache = micache.ActivationCache.with_capacity(1)
    assert cache.is_empty and repr(cache) == "micache.ActivationCache(n_layers=0)"
    cache.push(residuals[0][-1])
    np.testing.assert_array_equal(cache.to_f32_vecs()[0], residuals[0][-1])
    assert [a.shape for a in cache.activations] == [(4,)]


def test_activation_cache_round_trips_through_a_file(tmp_path, residuals) -> None:
    path = tmp_path / "activations.safetensors"
    micache.ActivationCache.new_cache(residuals).save(path)
    loaded = micache.ActivationCache.load(path)
    np.testing.assert_array_equal(np.from_dlpack(loaded.get_layer(1)), residuals[1])


@pytest.fixture
def full(residuals) -> micache.FullActivationCache:
    cache = micache.FullActivationCache()
    for layer in residuals:
        cache.push(layer)
    return cache


def test_full_cache_knows_its_sequence_length(full) -> None:
    assert (len(full), full.n_layers, full.seq_len, full.is_empty) == (3, 3, 5, False)
    assert repr(full) == "micache.FullActivationCache(n_layers=3, shape=[5, 4], dtype=f32, device=cpu)"


def test_get_position_is_a_view_of_the_layer(full, residuals) -> None:
    row = full.get_position(1, 2)
    assert row.shares_storage_with(full.get_layer(1))
    assert row.data_ptr == residuals[1][2].ctypes.data


def test_stack_position_gathers_every_layer(full, residuals) -> None:
    stacked = np.from_dlpack(full.stack_position(4))
    np.testing.assert_array_equal(stacked, np.stack([layer[4] for layer in residuals]))


def test_an_empty_full_cache_has_no_sequence_length() -> None:
    with pytest.raises(micache.HookError, match=r"^cache is empty$"):
        _ = micache.FullActivationCache().seq_len


def test_a_layer_of_another_shape_is_a_shape_error(full) -> None:
    with pytest.raises(micache.ShapeError):
        full.push(np.zeros((6, 4), np.float32))


def test_full_cache_round_trips_through_a_file(tmp_path, full, residuals) -> None:
    path = tmp_path / "full.safetensors"
    full.save(str(path))
    loaded = micache.FullActivationCache.load(path)
    assert loaded.seq_len == 5
    np.testing.assert_array_equal(np.from_dlpack(loaded.get_position(2, 0)), residuals[2][0])
