"""Every micache failure raises the micache.Error subclass named for its code, also the matching built-in."""

from __future__ import annotations

import numpy as np
import pytest

import micache

HIERARCHY = [
    (micache.HookError, micache.ErrorCode.Hook, IndexError),
    (micache.ShapeError, micache.ErrorCode.Shape, ValueError),
    (micache.DimensionMismatchError, micache.ErrorCode.DimensionMismatch, ValueError),
    (micache.NonFiniteInputError, micache.ErrorCode.NonFiniteInput, ValueError),
    (micache.EmptyInputError, micache.ErrorCode.EmptyInput, ValueError),
    (micache.ZeroDimensionError, micache.ErrorCode.ZeroDimension, ValueError),
    (micache.OddDimensionError, micache.ErrorCode.OddDimension, ValueError),
    (micache.InvalidBitWidthError, micache.ErrorCode.InvalidBitWidth, ValueError),
    (micache.ZeroProjectionsError, micache.ErrorCode.ZeroProjections, ValueError),
    (micache.DimensionTooLargeError, micache.ErrorCode.DimensionTooLarge, ValueError),
    (micache.ConfigError, micache.ErrorCode.Config, ValueError),
    (micache.OutOfMemoryError, micache.ErrorCode.OutOfMemory, MemoryError),
    (micache.BackendError, micache.ErrorCode.Backend, RuntimeError),
    (micache.IoError, micache.ErrorCode.Io, OSError),
]


@pytest.mark.parametrize(("cls", "code", "builtin"), HIERARCHY, ids=[c.__name__ for c, _, _ in HIERARCHY])
def test_each_class_is_an_error_and_its_builtin_and_carries_its_code(cls, code, builtin) -> None:
    assert issubclass(cls, micache.Error)
    assert issubclass(cls, builtin)
    assert cls.code is code
    assert cls.__name__ == f"{code.name}Error"


def test_there_is_one_class_per_error_code() -> None:
    assert {code for _, code, _ in HIERARCHY} == set(micache.ErrorCode)


def _raised(call) -> micache.Error:
    with pytest.raises(micache.Error) as info:
        call()
    return info.value


def test_hook_error_for_a_position_out_of_range(pattern: np.ndarray) -> None:
    cache = micache.AttentionCache()
    cache.push(pattern)
    error = _raised(lambda: cache.attention_from_position(0, 10))
    assert type(error) is micache.HookError
    assert error.code is micache.ErrorCode.Hook
    assert str(error) == "position 10 out of range (seq_q=4)"
    assert isinstance(error, IndexError)


def test_shape_error_for_a_pattern_of_rank_3() -> None:
    error = _raised(lambda: micache.AttentionCache().push(np.zeros((2, 2, 2), np.float32)))
    assert type(error) is micache.ShapeError
    assert str(error) == "pattern must be [batch, heads, seq_q, seq_k], got rank 3 [2, 2, 2]"


def test_dimension_mismatch_error_for_a_short_latent() -> None:
    cache = micache.MlaKvCache(8, 4, 4, 0)
    error = _raised(lambda: cache.push_latent([0.5] * 6))
    assert type(error) is micache.DimensionMismatchError
    assert str(error) == "dimension mismatch: quantizer expects 8, got 6 (latent)"


def test_non_finite_input_error_for_nan_in_a_key() -> None:
    cache = micache.MultiHeadKvCache(2, micache.KvCacheConfig(head_dim=4, projections=4))
    keys = [[1.0, 2.0, 3.0, 4.0], [1.0, float("nan"), 3.0, 4.0]]
    error = _raised(lambda: cache.push_token(keys, [[1.0] * 4] * 2))
    assert type(error) is micache.NonFiniteInputError
    assert str(error) == "input contains non-finite values (NaN or Inf) at index 1 (keys of head 1)"


def test_empty_input_error_for_zero_heads() -> None:
    error = _raised(lambda: micache.MultiHeadKvCache(0, micache.KvCacheConfig(head_dim=4, projections=4)))
    assert type(error) is micache.EmptyInputError
    assert str(error) == "empty input: num_heads must be > 0"


@pytest.mark.parametrize(
    ("settings", "cls", "message"),
    [
        ({"head_dim": 0, "projections": 4}, micache.ZeroDimensionError, "dimension must be > 0"),
        ({"head_dim": 7, "projections": 4}, micache.OddDimensionError, "dimension must be even, got 7"),
        ({"head_dim": 8, "bits": 0, "projections": 4}, micache.InvalidBitWidthError, "bit width must be 1..=16, got 0"),
        ({"head_dim": 8, "projections": 0}, micache.ZeroProjectionsError, "projections must be > 0"),
        (
            {"head_dim": 131072, "projections": 4},
            micache.DimensionTooLargeError,
            "dimension 131072 too large for compact format (max 131070)",
        ),
    ],
    ids=["zero-dimension", "odd-dimension", "bit-width", "zero-projections", "dimension-too-large"],
)
def test_config_validation_errors_keep_bitpolar_messages(settings, cls, message) -> None:
    error = _raised(lambda: micache.KvCacheConfig(**settings).validate())
    assert type(error) is cls
    assert str(error) == message


def test_config_error_for_an_integer_pattern() -> None:
    error = _raised(lambda: micache.AttentionCache().push(np.zeros((1, 1, 2, 2), np.int32)))
    assert type(error) is micache.ConfigError
    assert str(error) == "pattern dtype must be f32, f16 or bf16, got i32"


def test_out_of_memory_error_for_a_failed_allocation_leaves_the_cache_unchanged(cpu_backend) -> None:
    cache = micache.KVCache(1)
    keys = np.ones((1, 2, 3, 4), np.float32)
    cpu_backend.fail_allocation_after(1)
    error = _raised(lambda: cache.append(0, keys, keys))
    assert type(error) is micache.OutOfMemoryError
    assert isinstance(error, MemoryError)
    assert str(error) == "allocation of 512 bytes on cpu failed (injected fault)"
    assert cache.is_empty


def test_backend_error_for_a_destroyed_stream() -> None:
    owned = micache.OwnedStream()
    stream = owned.get()
    owned.reset()
    keys = np.ones((1, 2, 3, 4), np.float32)
    error = _raised(lambda: micache.KVCache(1, stream).append(0, keys, keys))
    assert type(error) is micache.BackendError
    assert str(error) == f"stream {stream.handle:#x} is not a live cpu stream (destroyed, or made by another backend)"


def test_io_error_for_a_missing_file(tmp_path) -> None:
    path = tmp_path / "missing.safetensors"
    error = _raised(lambda: micache.AttentionCache.load(path))
    assert type(error) is micache.IoError
    assert isinstance(error, OSError)
    assert str(error) == f"{path}: cannot open"


def test_builtin_except_clauses_catch_micache_errors(pattern: np.ndarray) -> None:
    cache = micache.AttentionCache()
    cache.push(pattern)
    with pytest.raises(IndexError, match=r"^layer 3 not in attention cache$"):
        cache.attention_from_position(3, 0)
