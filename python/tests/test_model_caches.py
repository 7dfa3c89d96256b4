"""MlaKvCache, LinearState and ModelKvCache with the builders of known models."""

from __future__ import annotations

import numpy as np
import pytest

import micache


def test_mla_cache_compresses_latents(rng) -> None:
    cache = micache.MlaKvCache(latent_dim=16, bits=4, projections=8, seed=1)
    latents = rng.standard_normal((3, 16)).astype(np.float32)
    for latent in latents:
        cache.push_latent(latent)
    assert (len(cache), cache.latent_dim, cache.is_empty) == (3, 16, False)
    decoded = np.array(cache.decode_latents())
    assert decoded.shape == (3, 16)
    np.testing.assert_array_equal(np.from_dlpack(cache.decode_latents_tensor()), decoded)
    codes = np.from_dlpack(cache.latent_codes())
    assert codes.shape == (3, cache.record_bytes) and codes.dtype == np.uint8
    assert cache.memory_usage == 3 * cache.record_bytes
    assert cache.memory_reserved >= cache.memory_usage and cache.table_bytes > 0
    assert cache.compression_ratio > 1
    assert cache.config.head_dim == 16
    assert repr(cache) == "micache.MlaKvCache(latent_dim=16, len=3, bits=4, device=cpu)"
    cache.clear()
    assert cache.is_empty


def test_deepseek_v3_latents_are_512_wide() -> None:
    assert micache.MlaKvCache.deepseek_v3(4, 32, 0).latent_dim == 512


def test_gemma3_alternates_window_and_global_layers() -> None:
    model = micache.gemma3_cache(6, 1, 2, 8, 4, 8, 0)
    assert len(model) == model.num_layers == 6
    assert [model.kind(i) for i in range(6)] == [micache.LayerKind.Window] * 5 + [micache.LayerKind.Global]
    assert isinstance(model.layer(0), micache.SlidingWindowKvCache)
    assert isinstance(model[5], micache.GqaKvCache)


def test_layers_are_views_into_the_model(rng) -> None:
    model = micache.deepseek_v3_cache(2, 4, 8, 0)
    layer = model.layer(1)
    layer.push_latent(rng.standard_normal(512).astype(np.float32))
    assert model.total_compressed_bytes == layer.memory_usage > 0
    del model
    assert len(layer) == 1
    assert repr(micache.deepseek_v3_cache(1, 4, 8, 0)) == "micache.ModelKvCache(num_layers=1, total_compressed_bytes=0)"


def test_clear_empties_every_layer(rng) -> None:
    model = micache.llama3_8b_cache(4, 8, 0)
    model[0].push_token(rng.standard_normal((8, 128)).astype(np.float32), rng.standard_normal((8, 128)).astype(np.float32))
    assert model.total_compressed_bytes > 0
    model.clear()
    assert model.total_compressed_bytes == 0


def test_a_layer_out_of_range_is_a_hook_error_and_ends_iteration() -> None:
    model = micache.deepseek_v3_cache(2, 4, 8, 0)
    with pytest.raises(micache.HookError, match=r"^layer 2 out of range \(num_layers=2\)$"):
        model.layer(2)
    assert len(list(model)) == 2


def test_llama3_70b_has_80_layers() -> None:
    assert micache.llama3_70b_cache(4, 8, 0).num_layers == 80


def test_linear_state_is_kept_as_given() -> None:
    state = micache.LinearState([0.5, 1.5], state_dim=2)
    assert (state.state, state.state_dim) == ([0.5, 1.5], 2)
    assert repr(state) == "micache.LinearState(len(state)=2, state_dim=2)"
