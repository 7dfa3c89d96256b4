"""PyTorch tensors in and out without a copy (skipped where torch is not installed)."""

from __future__ import annotations

import pytest

import micache

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
