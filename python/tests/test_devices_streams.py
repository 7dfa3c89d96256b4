"""Device, Stream, OwnedStream, Backend and memory statistics."""

from __future__ import annotations

import numpy as np
import pytest

import micache


def test_cpu_device_names_and_compares() -> None:
    cpu = micache.Device.cpu()
    assert (str(cpu), repr(cpu), cpu.kind, cpu.index, cpu.is_cpu, cpu.is_cuda) == (
        "cpu",
        "micache.Device('cpu')",
        micache.DeviceKind.Cpu,
        0,
        True,
        False,
    )
    assert cpu == micache.Device("cpu") == micache.Device()
    assert hash(cpu) == hash(micache.Device("cpu"))


def test_cuda_device_parses_like_torch() -> None:
    assert micache.Device("cuda:1") == micache.Device.cuda(1)
    assert micache.Device("cuda") == micache.Device.cuda(0)
    assert str(micache.Device.cuda(2)) == "cuda:2"


def test_an_unknown_device_name_is_a_config_error() -> None:
    with pytest.raises(micache.ConfigError, match=r"^device 'gpu' is not cpu, cuda or cuda:N$"):
        micache.Device("gpu")


def test_available_devices_start_with_the_cpu() -> None:
    devices = micache.available_devices()
    assert devices[0] == micache.Device.cpu()
    assert micache.Device.best() == (devices[1] if len(devices) > 1 else devices[0])


def test_cuda_availability_is_explained() -> None:
    reason = micache.cuda_unavailable_reason()
    assert isinstance(micache.cuda_built(), bool)
    assert (reason == "") == (len(micache.available_devices()) > 1)


def test_the_default_stream_is_null() -> None:
    assert micache.Stream().handle == 0
    assert micache.Stream() == micache.Stream(0)
    assert repr(micache.Stream()) == "micache.Stream()"


def test_an_owned_stream_passes_wherever_a_stream_does() -> None:
    with micache.OwnedStream() as owned:
        cache = micache.KVCache(2, owned)
        assert cache.stream == owned.get() == micache.Stream(owned)
        assert cache.stream.handle != 0
        del cache
    assert owned.get() == micache.Stream()


def test_a_cache_works_on_its_stream() -> None:
    owned = micache.OwnedStream(micache.Device.cpu())
    keys = np.ones((1, 2, 3, 4), np.float32)
    cache = micache.KVCache(1, owned)
    cache.append(0, keys, keys)
    owned.synchronize()
    assert cache.seq_len() == 3
    assert cache.keys(0).stream == owned.get()


def test_backend_for_the_cpu() -> None:
    backend = micache.backend_for(micache.Device.cpu())
    assert backend.name == "cpu"
    assert backend.device == micache.Device.cpu()
    assert backend.deferred_errors == 0
    assert backend.description
    assert repr(backend) == "micache.Backend(name='cpu', device=cpu)"


def test_memory_stats_count_a_caches_bytes() -> None:
    before = micache.memory_stats()
    cache = micache.KVCache(1)
    keys = np.ones((1, 2, 3, 4), np.float32)
    cache.append(0, keys, keys)
    after = micache.memory_stats(micache.Device.cpu())
    assert after.in_use - before.in_use == cache.memory_reserved == 1024
    assert after.peak >= after.in_use
    assert repr(after).startswith("micache.MemoryStats(in_use=")


def test_reset_peak_and_release_unused_memory() -> None:
    backend = micache.backend_for()
    backend.reset_peak()
    assert backend.memory_stats().peak == backend.memory_stats().in_use
    trims = backend.memory_stats().trims
    backend.release_unused_memory()
    assert backend.memory_stats().trims == trims + 1


def test_an_owned_stream_names_its_device_and_handle() -> None:
    owned = micache.OwnedStream()
    assert repr(owned) == f"micache.OwnedStream(device=cpu, stream=micache.Stream({owned.get().handle:#x}))"
    assert owned.device == micache.Device.cpu()
    micache.backend_for().synchronize(owned.get())


def test_dtypes_know_their_size_and_name() -> None:
    assert [(str(d), d.itemsize) for d in micache.DType] == [
        ("f32", 4),
        ("f16", 2),
        ("bf16", 2),
        ("i32", 4),
        ("u8", 1),
        ("i64", 8),
    ]
