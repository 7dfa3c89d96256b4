"""TransformerLens and Hugging Face bridges: hook dictionaries and past_key_values in and out, files both ways."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import micache
from micache.hf import kv_cache_from_past_key_values, kv_cache_to_past_key_values
from micache.transformer_lens import (
    attention_cache_from_hooks,
    full_activation_cache_from_hooks,
    to_hook_dict,
)


@pytest.fixture
def safetensors_numpy():
    """safetensors' numpy API, the Python side of every file test (skipped where safetensors is missing)."""
    return pytest.importorskip("safetensors.numpy", reason="safetensors is not installed: the file tests need it")


@pytest.fixture
def hooks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What run_with_cache gives for a 3-layer model, batch 1, 5 tokens, 2 heads, d_model 4, plus unrelated hooks."""
    scores = rng.random((3, 1, 2, 5, 5), dtype=np.float32)
    patterns = scores / scores.sum(axis=-1, keepdims=True)
    result: dict[str, np.ndarray] = {"hook_embed": rng.standard_normal((1, 5, 4)).astype(np.float32)}
    for i in range(3):
        result[f"blocks.{i}.attn.hook_pattern"] = np.ascontiguousarray(patterns[i])
        result[f"blocks.{i}.hook_resid_post"] = rng.standard_normal((1, 5, 4)).astype(np.float32)
        result[f"blocks.{i}.attn.hook_z"] = rng.standard_normal((1, 5, 2, 2)).astype(np.float32)
    return result


@pytest.fixture
def past_key_values(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two layers of Hugging Face keys and values, [batch=1, kv_heads=2, seq=6, head_dim=4]."""
    return [
        (
            rng.standard_normal((1, 2, 6, 4)).astype(np.float32),
            rng.standard_normal((1, 2, 6, 4)).astype(np.float32),
        )
        for _ in range(2)
    ]


def test_the_bridges_are_exported_from_the_package() -> None:
    assert micache.transformer_lens.to_hook_dict is to_hook_dict
    assert micache.hf.kv_cache_from_past_key_values is kv_cache_from_past_key_values


def test_attention_cache_takes_every_pattern_without_a_copy(hooks) -> None:
    cache = attention_cache_from_hooks(hooks)
    assert len(cache) == 3
    assert cache.get_layer(2).data_ptr == hooks["blocks.2.attn.hook_pattern"].ctypes.data


def test_attention_cache_round_trips_through_a_hook_dict(hooks) -> None:
    back = to_hook_dict(attention_cache_from_hooks(hooks), convert=np.from_dlpack)
    assert sorted(back) == [f"blocks.{i}.attn.hook_pattern" for i in range(3)]
    for name, value in back.items():
        np.testing.assert_array_equal(value, hooks[name])


def test_attention_cache_reads_a_transformer_lens_cache_object(hooks) -> None:
    class ActivationCacheLike:
        """TransformerLens's ActivationCache: keys() and [name], not a dict."""

        def keys(self):
            return hooks.keys()

        def __getitem__(self, name: str) -> np.ndarray:
            return hooks[name]

    assert len(attention_cache_from_hooks(ActivationCacheLike())) == 3


def test_attention_cache_needs_a_pattern() -> None:
    with pytest.raises(ValueError, match=r"^no blocks\.\{i\}\.attn\.hook_pattern in hooks$"):
        attention_cache_from_hooks({"hook_embed": np.zeros((1, 2, 3), np.float32)})


def test_attention_cache_names_a_missing_layer(hooks) -> None:
    del hooks["blocks.1.attn.hook_pattern"]
    with pytest.raises(ValueError, match=r"^blocks\.1\.attn\.hook_pattern missing: hooks hold layers 0, 2$"):
        attention_cache_from_hooks(hooks)


def test_attention_cache_names_the_hook_of_a_pattern_without_its_batch_axis(hooks) -> None:
    hooks["blocks.1.attn.hook_pattern"] = np.ascontiguousarray(hooks["blocks.1.attn.hook_pattern"][0])
    with pytest.raises(micache.ShapeError) as caught:
        attention_cache_from_hooks(hooks)
    assert str(caught.value) == (
        "blocks.1.attn.hook_pattern: pattern must be [batch, heads, seq_q, seq_k], got rank 3 [2, 5, 5]"
    )


def test_full_activation_cache_takes_batch_row_zero_without_a_copy(hooks) -> None:
    cache = full_activation_cache_from_hooks(hooks)
    assert (cache.n_layers, cache.seq_len) == (3, 5)
    assert cache.get_layer(1).data_ptr == hooks["blocks.1.hook_resid_post"].ctypes.data


def test_full_activation_cache_round_trips_through_a_hook_dict(hooks) -> None:
    back = to_hook_dict(full_activation_cache_from_hooks(hooks), convert=np.from_dlpack)
    assert sorted(back) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    for name, value in back.items():
        np.testing.assert_array_equal(value, hooks[name])


def test_full_activation_cache_reads_another_batch_row_and_another_hook(rng) -> None:
    resid = {f"blocks.{i}.hook_resid_pre": rng.standard_normal((2, 5, 4)).astype(np.float32) for i in range(2)}
    cache = full_activation_cache_from_hooks(resid, hook="hook_resid_pre", batch=1)
    back = to_hook_dict(cache, hook="hook_resid_pre", batch_dim=False, convert=np.from_dlpack)
    np.testing.assert_array_equal(back["blocks.1.hook_resid_pre"], resid["blocks.1.hook_resid_pre"][1])


def test_full_activation_cache_takes_layers_without_their_batch_axis(hooks) -> None:
    resid = {name: value[0] for name, value in hooks.items() if name.endswith("hook_resid_post")}
    assert full_activation_cache_from_hooks(resid).seq_len == 5


def test_full_activation_cache_names_the_hook_of_a_batch_row_out_of_range(hooks) -> None:
    with pytest.raises(micache.HookError, match=r"^blocks\.0\.hook_resid_post: index 1 out of range \(dim0=1\)$"):
        full_activation_cache_from_hooks(hooks, batch=1)


def test_full_activation_cache_names_the_hook_of_a_wrong_rank(hooks) -> None:
    with pytest.raises(
        micache.ShapeError,
        match=r"^blocks\.0\.attn\.hook_z: expected \[batch, pos, d_model\] or \[pos, d_model\], got shape \[1, 5, 2, 2\]$",
    ):
        full_activation_cache_from_hooks(hooks, hook="attn.hook_z")


def test_hook_dict_values_are_micache_tensors_without_convert(hooks) -> None:
    back = to_hook_dict(attention_cache_from_hooks(hooks))
    assert isinstance(back["blocks.0.attn.hook_pattern"], micache.Tensor)


def test_hook_dict_refuses_another_cache() -> None:
    with pytest.raises(TypeError, match=r"^expected an AttentionCache or a FullActivationCache, got KVCache$"):
        to_hook_dict(micache.KVCache(1))


def test_attention_cache_file_holds_transformer_lens_names(tmp_path, safetensors_numpy, hooks) -> None:
    path = tmp_path / "attention.safetensors"
    attention_cache_from_hooks(hooks).save(path)
    tensors = safetensors_numpy.load_file(path)
    assert sorted(tensors) == [f"blocks.{i}.attn.hook_pattern" for i in range(3)]
    np.testing.assert_array_equal(tensors["blocks.2.attn.hook_pattern"], hooks["blocks.2.attn.hook_pattern"])


def test_a_transformer_lens_file_loads_into_an_attention_cache(tmp_path, safetensors_numpy, hooks) -> None:
    path = tmp_path / "run_with_cache.safetensors"
    safetensors_numpy.save_file(hooks, path)
    cache = micache.AttentionCache.load(path)
    np.testing.assert_array_equal(np.from_dlpack(cache.get_layer(1)), hooks["blocks.1.attn.hook_pattern"])


def test_full_activation_cache_file_holds_transformer_lens_names(tmp_path, safetensors_numpy, hooks) -> None:
    path = tmp_path / "residuals.safetensors"
    full_activation_cache_from_hooks(hooks).save(path)
    tensors = safetensors_numpy.load_file(path)
    assert sorted(tensors) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    np.testing.assert_array_equal(tensors["blocks.0.hook_resid_post"], hooks["blocks.0.hook_resid_post"][0])


def test_a_batchless_transformer_lens_file_loads_into_a_full_activation_cache(
    tmp_path, safetensors_numpy, hooks
) -> None:
    path = tmp_path / "run_with_cache.safetensors"
    batchless = {f"blocks.{i}.hook_resid_post": hooks[f"blocks.{i}.hook_resid_post"][0] for i in range(3)}
    safetensors_numpy.save_file(batchless, path)
    cache = micache.FullActivationCache.load(path)
    np.testing.assert_array_equal(np.from_dlpack(cache.get_layer(2)), hooks["blocks.2.hook_resid_post"][0])


def test_kv_cache_round_trips_through_past_key_values(past_key_values) -> None:
    cache = kv_cache_from_past_key_values(past_key_values)
    assert (cache.n_layers, cache.seq_len(), cache.positions(1)) == (2, 6, list(range(6)))
    back = kv_cache_to_past_key_values(cache, convert=np.from_dlpack)
    assert len(back) == 2
    for (keys, values), (want_keys, want_values) in zip(back, past_key_values):
        np.testing.assert_array_equal(keys, want_keys)
        np.testing.assert_array_equal(values, want_values)


def test_kv_cache_copies_what_it_reads(past_key_values) -> None:
    cache = kv_cache_from_past_key_values(past_key_values)
    assert cache.keys(0).data_ptr != past_key_values[0][0].ctypes.data


def test_kv_cache_reads_key_cache_and_value_cache_lists(past_key_values) -> None:
    dynamic_cache = SimpleNamespace(
        key_cache=[keys for keys, _ in past_key_values], value_cache=[values for _, values in past_key_values]
    )
    cache = kv_cache_from_past_key_values(dynamic_cache)
    np.testing.assert_array_equal(np.from_dlpack(cache.values(1)), past_key_values[1][1])


def test_kv_cache_reads_cache_layers_with_keys_and_values(past_key_values) -> None:
    layers = [SimpleNamespace(keys=keys, values=values) for keys, values in past_key_values]
    layers.append(SimpleNamespace(keys=None, values=None))
    cache = kv_cache_from_past_key_values(SimpleNamespace(layers=layers))
    assert (cache.n_layers, cache.seq_len(0), cache.seq_len(2)) == (3, 6, 0)
    np.testing.assert_array_equal(np.from_dlpack(cache.keys(1)), past_key_values[1][0])


def test_kv_cache_refuses_an_item_that_is_not_a_pair(past_key_values) -> None:
    keys, values = past_key_values[1]
    with pytest.raises(ValueError, match=r"^layer 1: expected a \(key, value\) pair, got 3 items$"):
        kv_cache_from_past_key_values([past_key_values[0], (keys, values, values)])


def test_kv_cache_names_the_layer_of_a_wrong_rank(past_key_values) -> None:
    keys, values = past_key_values[0]
    with pytest.raises(micache.ShapeError) as caught:
        kv_cache_from_past_key_values([(keys[0], values[0])])
    assert str(caught.value) == (
        "layer 0: set_layer: keys must be [batch, kv_heads, seq_len, head_dim], got rank 3 [2, 6, 4]"
    )


def test_past_key_values_needs_every_layer_filled(past_key_values) -> None:
    cache = micache.KVCache(3)
    cache.set_layer(0, *past_key_values[0])
    with pytest.raises(
        ValueError, match=r"^layer 1 is empty: past_key_values needs keys and values for every layer$"
    ):
        kv_cache_to_past_key_values(cache)


def test_kv_cache_file_holds_hugging_face_layout(tmp_path, safetensors_numpy, past_key_values) -> None:
    path = tmp_path / "kv.safetensors"
    kv_cache_from_past_key_values(past_key_values).save(path)
    tensors = safetensors_numpy.load_file(path)
    np.testing.assert_array_equal(tensors["blocks.1.attn.k_cache"], past_key_values[1][0])
    np.testing.assert_array_equal(tensors["blocks.1.attn.v_cache"], past_key_values[1][1])


def test_a_hugging_face_file_loads_into_a_kv_cache(tmp_path, safetensors_numpy, past_key_values) -> None:
    path = tmp_path / "past_key_values.safetensors"
    tensors = {}
    for i, (keys, values) in enumerate(past_key_values):
        tensors[f"blocks.{i}.attn.k_cache"] = keys
        tensors[f"blocks.{i}.attn.v_cache"] = values
    safetensors_numpy.save_file(tensors, path)
    back = kv_cache_to_past_key_values(micache.KVCache.load(path), convert=np.from_dlpack)
    np.testing.assert_array_equal(back[1][0], past_key_values[1][0])
    np.testing.assert_array_equal(back[0][1], past_key_values[0][1])
