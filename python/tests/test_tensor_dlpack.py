"""micache.Tensor and the DLPack exchange: in and out without a copy where micache can read memory in place."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import micache


def test_a_numpy_array_goes_in_without_a_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = micache.from_dlpack(array)
    assert tensor.data_ptr == array.ctypes.data
    assert tensor.shape == (3, 4)
    assert tensor.dtype is micache.DType.F32
    assert tensor.device == micache.Device.cpu()


@pytest.mark.parametrize(
    ("numpy_dtype", "dtype"),
    [
        (np.float32, micache.DType.F32),
        (np.float16, micache.DType.F16),
        (np.int32, micache.DType.I32),
        (np.int64, micache.DType.I64),
        (np.uint8, micache.DType.U8),
    ],
)
def test_every_dtype_micache_holds_goes_in_without_a_copy(numpy_dtype, dtype) -> None:
    array = np.arange(6).astype(numpy_dtype)
    tensor = micache.Tensor(array)
    assert tensor.dtype is dtype
    assert tensor.data_ptr == array.ctypes.data


def test_a_pushed_pattern_is_the_callers_memory(pattern: np.ndarray) -> None:
    cache = micache.AttentionCache()
    cache.push(pattern)
    assert cache.get_layer(0).data_ptr == pattern.ctypes.data


def test_a_read_only_array_goes_in() -> None:
    array = np.ones((1, 1, 2, 2), np.float32)
    array.flags.writeable = False
    assert micache.Tensor(array).data_ptr == array.ctypes.data


def test_a_strided_array_is_copied_to_contiguous_memory() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    tensor = micache.Tensor(array)
    assert tensor.data_ptr != array.ctypes.data
    np.testing.assert_array_equal(np.from_dlpack(tensor), array)


def test_float64_is_converted_to_float32() -> None:
    tensor = micache.Tensor(np.array([0.5, 1.5], np.float64))
    assert tensor.dtype is micache.DType.F32
    np.testing.assert_array_equal(np.from_dlpack(tensor), np.array([0.5, 1.5], np.float32))


def test_a_dtype_micache_holds_no_form_of_is_a_config_error() -> None:
    with pytest.raises(micache.ConfigError) as info:
        micache.Tensor(np.zeros(3, np.int16))
    assert str(info.value) == (
        "tensor dtype int16 is not one micache holds (float32, float16, bfloat16, int32, int64, uint8; "
        "float64 is converted to float32)"
    )


def test_an_object_without_dlpack_or_a_buffer_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="incompatible function arguments"):
        micache.Tensor([1.0, 2.0])


def test_a_wrapped_array_stays_alive_while_micache_holds_it(pattern: np.ndarray) -> None:
    array = pattern.copy()
    alive = weakref.ref(array)
    cache = micache.AttentionCache()
    cache.push(array)
    del array
    gc.collect()
    assert alive() is not None
    del cache
    gc.collect()
    assert alive() is None


def test_a_returned_tensor_goes_out_without_a_copy(attention: micache.AttentionCache) -> None:
    mean = attention.head_mean(0)
    array = np.from_dlpack(mean)
    assert array.ctypes.data == mean.data_ptr
    assert array.shape == (4, 4)
    assert array.dtype == np.float32


def test_an_exported_array_outlives_the_cache_and_tensor(pattern: np.ndarray) -> None:
    cache = micache.AttentionCache()
    cache.push(pattern)
    array = np.from_dlpack(cache.head_mean(0))
    del cache
    gc.collect()
    np.testing.assert_allclose(array, pattern[0].mean(axis=0), rtol=1e-6)


def test_a_round_trip_shares_the_callers_memory() -> None:
    array = np.arange(4, dtype=np.float32)
    back = np.from_dlpack(micache.Tensor(array))
    assert np.shares_memory(back, array)


class _Capsule:
    """A DLPack producer handing out one given capsule (numpy before 2.1 cannot pass copy= itself)."""

    def __init__(self, capsule, device) -> None:
        self.capsule, self.device = capsule, device

    def __dlpack__(self, **_):
        return self.capsule

    def __dlpack_device__(self):
        return self.device


def test_dlpack_copy_true_gives_new_memory() -> None:
    array = np.arange(4, dtype=np.float32)
    tensor = micache.Tensor(array)
    copied = np.from_dlpack(_Capsule(tensor.__dlpack__(copy=True), tensor.__dlpack_device__()))
    assert not np.shares_memory(copied, array)
    np.testing.assert_array_equal(copied, array)


def test_dlpack_device_of_a_cpu_tensor() -> None:
    assert micache.Tensor(np.zeros(2, np.float32)).__dlpack_device__() == (1, 0)


def test_a_cpu_tensor_refuses_a_consumer_stream() -> None:
    with pytest.raises(BufferError, match=r"^__dlpack__\(\): stream must be None for a tensor on the CPU$"):
        micache.Tensor(np.zeros(2, np.float32)).__dlpack__(stream=5)


def test_tensor_properties_describe_its_geometry() -> None:
    tensor = micache.Tensor(np.zeros((2, 3), np.float16))
    assert (tensor.rank, tensor.numel, tensor.nbytes, tensor.offset, len(tensor)) == (2, 6, 12, 0, 2)
    assert repr(tensor) == "micache.Tensor(shape=[2, 3], dtype=f16, device=cpu)"


def test_len_of_a_rank_0_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^len\(\) of a rank-0 micache.Tensor$"):
        len(micache.Tensor(np.array(1.0, np.float32)))


def test_views_share_storage() -> None:
    tensor = micache.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    row = tensor.select(1)
    assert row.shares_storage_with(tensor)
    np.testing.assert_array_equal(np.from_dlpack(row), [4, 5, 6, 7])
    np.testing.assert_array_equal(np.from_dlpack(tensor.narrow(1, 2)).shape, (2, 4))
    assert tensor.reshape([4, 3]).shape == (4, 3)


def test_to_dtype_converts_on_the_device() -> None:
    half = micache.Tensor(np.array([1.0, 2.5], np.float32)).to_dtype(micache.DType.BF16)
    assert half.dtype is micache.DType.BF16
    np.testing.assert_array_equal(np.from_dlpack(half.to_dtype(micache.DType.F32)), [1.0, 2.5])


def test_to_copies_to_a_device() -> None:
    tensor = micache.Tensor(np.arange(3, dtype=np.float32))
    moved = tensor.to(micache.Device.cpu())
    assert not moved.shares_storage_with(tensor)
    np.testing.assert_array_equal(np.from_dlpack(moved), [0, 1, 2])


def test_empty_allocates_through_the_backend(cpu_backend: micache.Backend) -> None:
    before = cpu_backend.memory_stats().in_use
    tensor = micache.Tensor.empty([4, 4], micache.DType.F32)
    assert tensor.shape == (4, 4)
    assert cpu_backend.memory_stats().in_use >= before + 64


def test_dlpack_accepts_its_own_device_and_refuses_another() -> None:
    tensor = micache.Tensor(np.zeros(2, np.float32))
    assert tensor.__dlpack__(dl_device=(1, 0)) is not None
    with pytest.raises(BufferError, match=r"unsupported dl_device"):
        tensor.__dlpack__(dl_device=(2, 0))


class _Asked(Exception):
    """Raised by _CudaProducer once it has recorded the stream it was asked for."""


class _CudaProducer:
    """Says its memory is on CUDA device 0 and records the stream each `__dlpack__` call asks for."""

    def __init__(self) -> None:
        self.streams: list[object] = []

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)

    def __dlpack__(self, *, stream=None, **_):
        self.streams.append(stream)
        raise _Asked


def test_a_cuda_producer_is_asked_for_no_stream_by_default() -> None:
    producer = _CudaProducer()  # DLPack's None: the legacy default stream, micache's default
    with pytest.raises(_Asked):
        micache.from_dlpack(producer)
    assert set(producer.streams) == {None}


def test_a_cuda_producer_is_asked_for_the_stream_micache_reads_on() -> None:
    producer = _CudaProducer()
    with pytest.raises(_Asked):
        micache.Tensor(producer, stream=micache.Stream(0x5000))
    assert producer.streams == [0x5000]


def test_a_cache_asks_a_cuda_producer_for_its_own_stream() -> None:
    owned = micache.OwnedStream()
    cache = micache.KVCache(1, owned.get())
    producer = _CudaProducer()
    with pytest.raises(_Asked):
        cache.append(0, producer, producer)
    assert producer.streams == [owned.get().handle]


class _Refusing:
    """A producer whose __dlpack__ raises an error of its own."""

    def __dlpack__(self, **_):
        raise RuntimeError("this producer cannot export")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


def test_a_producers_own_export_error_reaches_the_caller() -> None:
    with pytest.raises(RuntimeError, match=r"^this producer cannot export$"):
        micache.from_dlpack(_Refusing())
