"""PyTorch tensors in and out without a copy (skipped where torch is not installed)."""

from __future__ import annotations

import pytest

import micache
from micache.hf import kv_cache_from_past_key_values, kv_cache_to_past_key_values
from micache.transformer_lens import attention_cache_from_hooks, full_activation_cache_from_hooks, to_hook_dict

torch = pytest.importorskip("torch", reason="PyTorch is not installed: its zero-copy tests need it")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and micache.cuda_built() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_torch_tensor_goes_in_without_a_copy(device: str) -> None:
    pattern = torch.rand(1, 2, 4, 4, device=device).softmax(-1)
    cache = micache.AttentionCache()
    cache.push(pattern)
    layer = cache.get_layer(0)
    assert layer.data_ptr == pattern.data_ptr()
    assert layer.device == micache.Device(device)


@pytest.mark.parametrize("device", DEVICES)
def test_a_returned_tensor_goes_out_to_torch_without_a_copy(device: str) -> None:
    pattern = torch.rand(1, 2, 4, 4, device=device).softmax(-1)
    cache = micache.AttentionCache()
    cache.push(pattern)
    mean = cache.head_mean(0)
    out = torch.from_dlpack(mean)
    assert out.data_ptr() == mean.data_ptr
    torch.testing.assert_close(out, pattern[0].mean(0))


def test_bfloat16_goes_in_and_out() -> None:
    values = torch.arange(6, dtype=torch.bfloat16)
    tensor = micache.from_dlpack(values)
    assert tensor.dtype is micache.DType.BF16
    assert tensor.data_ptr == values.data_ptr()
    assert torch.equal(torch.from_dlpack(tensor), values)


def test_a_kv_append_reads_torch_keys(device: str = "cpu") -> None:
    keys = torch.ones(1, 2, 3, 4, device=device)
    cache = micache.KVCache(1)
    cache.append(0, keys, keys * 2)
    assert torch.equal(torch.from_dlpack(cache.values(0)), keys * 2)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device and a CUDA build of micache")
def test_the_consumers_stream_waits_for_the_tensors() -> None:
    pattern = torch.rand(1, 2, 64, 64, device="cuda").softmax(-1)
    cache = micache.AttentionCache()
    cache.push(pattern)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = torch.from_dlpack(cache.head_mean(0))
        total = out.sum()
    side.synchronize()
    torch.testing.assert_close(total, pattern[0].mean(0).sum())


def test_transformer_lens_hooks_of_torch_tensors_go_in_without_a_copy() -> None:
    patterns = {f"blocks.{i}.attn.hook_pattern": torch.rand(1, 2, 5, 5).softmax(-1) for i in range(2)}
    cache = attention_cache_from_hooks(patterns)
    assert cache.get_layer(1).data_ptr == patterns["blocks.1.attn.hook_pattern"].data_ptr()


def test_a_hook_dict_comes_back_as_torch_tensors_sharing_the_cache() -> None:
    residuals = {f"blocks.{i}.hook_resid_post": torch.randn(1, 5, 4) for i in range(2)}
    cache = full_activation_cache_from_hooks(residuals)
    back = to_hook_dict(cache, convert=torch.from_dlpack)
    assert back["blocks.1.hook_resid_post"].data_ptr() == cache.get_layer(1).data_ptr
    assert torch.equal(back["blocks.1.hook_resid_post"], residuals["blocks.1.hook_resid_post"])


def test_bfloat16_past_key_values_round_trip_through_a_kv_cache() -> None:
    past = [(torch.randn(1, 2, 6, 4).bfloat16(), torch.randn(1, 2, 6, 4).bfloat16()) for _ in range(2)]
    cache = kv_cache_from_past_key_values(past)
    assert cache.keys(0).dtype is micache.DType.BF16
    back = kv_cache_to_past_key_values(cache, convert=torch.from_dlpack)
    assert back[1][0].dtype == torch.bfloat16
    assert torch.equal(back[1][0], past[1][0])
    assert torch.equal(back[0][1], past[0][1])


def test_a_bfloat16_kv_file_written_by_micache_loads_in_safetensors_torch(tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    keys, values = torch.randn(1, 2, 6, 4).bfloat16(), torch.randn(1, 2, 6, 4).bfloat16()
    cache = micache.KVCache(1)
    cache.append(0, keys, values)
    cache.save(tmp_path / "kv.safetensors")
    tensors = safetensors_torch.load_file(tmp_path / "kv.safetensors")
    assert torch.equal(tensors["blocks.0.attn.k_cache"], keys)
    assert torch.equal(tensors["blocks.0.attn.v_cache"], values)


def test_a_bfloat16_file_written_by_safetensors_torch_loads_into_a_kv_cache(tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    keys, values = torch.randn(1, 2, 6, 4).bfloat16(), torch.randn(1, 2, 6, 4).bfloat16()
    safetensors_torch.save_file({"blocks.0.attn.k_cache": keys, "blocks.0.attn.v_cache": values}, tmp_path / "kv.st")
    cache = micache.KVCache.load(tmp_path / "kv.st")
    assert torch.equal(torch.from_dlpack(cache.keys(0)), keys)
    assert torch.equal(torch.from_dlpack(cache.values(0)), values)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device and a CUDA build of micache")
def test_a_cache_reads_a_tensor_torch_wrote_on_another_stream() -> None:
    cache = micache.AttentionCache()  # on the default stream
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        pattern = torch.rand(1, 4, 512, 512, device="cuda").softmax(-1)
        cache.push(pattern)  # __dlpack__(stream=1): the default stream waits for `side`
    mean = torch.from_dlpack(cache.head_mean(0))
    torch.cuda.synchronize()
    torch.testing.assert_close(mean, pattern[0].mean(0))
