"""micache: device-resident caches for GPU inference and interpretability.

Every cache of the C++ library under the same names: ``AttentionCache``,
``ActivationCache``, ``FullActivationCache``, ``KVCache``, the compressed
caches (``KvCacheCompressor``, ``MultiHeadKvCache``, ``GqaKvCache``,
``SlidingWindowKvCache``, ``MlaKvCache``, ``ModelKvCache``), the serving
cache ``PagedKvCache`` (sequence ids are ints), with ``Device``,
``Stream`` and each backend's memory statistics.

Tensors cross in both directions through DLPack without a copy: any
producer (numpy, PyTorch, CuPy, JAX) goes in where micache can read it in
place, and every ``micache.Tensor`` a call returns goes out
(``np.from_dlpack(cache.head_mean(3))``, ``torch.from_dlpack(...)``).
Failures raise the subclass of :class:`micache.Error` named for their code.

Bridges: :mod:`micache.transformer_lens` (caches from and to
``run_with_cache``'s hook dictionaries) and :mod:`micache.hf` (a KVCache from
and to Hugging Face's ``past_key_values``). Pictures: :mod:`micache.plot`
(matplotlib, imported on first use of ``micache.plot``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol, Union

from ._micache import (
    ActivationCache,
    AttentionCache,
    Backend,
    CompressedCacheBase,
    CompressedHeads,
    Device,
    DeviceKind,
    DType,
    ErrorCode,
    EvictionPolicy,
    FiniteCheck,
    FullActivationCache,
    GqaKvCache,
    KVCache,
    KvCacheCompressor,
    KvCacheConfig,
    KvHeadView,
    LayerKind,
    LinearState,
    MemoryStats,
    MlaKvCache,
    ModelKvCache,
    MultiHeadKvCache,
    OwnedStream,
    PagedDeviceAccounting,
    PagedKv,
    PagedKvCache,
    PagedKvConfig,
    PagedKvState,
    PagedLayerGroups,
    PagedLayerKind,
    PagedLayout,
    PagedPageName,
    PagedPoolStats,
    PagedSequenceState,
    PagedSequenceStats,
    PagedStepPlan,
    PositionRun,
    PrefixCacheStats,
    PrefixHit,
    ScoreEstimator,
    SlidingWindowKvCache,
    Stream,
    Tensor,
    TopK,
    available_devices,
    backend_for,
    cuda_built,
    cuda_unavailable_reason,
    deepseek_v3_cache,
    from_dlpack,
    gemma3_cache,
    llama3_8b_cache,
    llama3_70b_cache,
    memory_stats,
)
from .errors import (
    BackendError,
    ConfigError,
    DimensionMismatchError,
    DimensionTooLargeError,
    EmptyInputError,
    Error,
    HookError,
    InvalidBitWidthError,
    IoError,
    NonFiniteInputError,
    OddDimensionError,
    OutOfMemoryError,
    ShapeError,
    ZeroDimensionError,
    ZeroProjectionsError,
)

from . import hf, transformer_lens


def __getattr__(name: str) -> ModuleType:
    """``micache.plot`` imported on first use, so that matplotlib stays optional."""
    if name == "plot":
        return importlib.import_module(".plot", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SupportsDLPack(Protocol):
    """An object that hands its memory over through DLPack (numpy, PyTorch, CuPy, JAX arrays)."""

    def __dlpack__(self, *, stream: Any = None) -> Any: ...

    def __dlpack_device__(self) -> tuple[int, int]: ...


TensorLike = Union[Tensor, SupportsDLPack]
"""What a tensor argument takes: a micache.Tensor or any DLPack producer (or buffer)."""

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "AttentionCache",
    "Backend",
    "BackendError",
    "CompressedCacheBase",
    "CompressedHeads",
    "ConfigError",
    "DType",
    "Device",
    "DeviceKind",
    "DimensionMismatchError",
    "DimensionTooLargeError",
    "EmptyInputError",
    "Error",
    "ErrorCode",
    "EvictionPolicy",
    "FiniteCheck",
    "FullActivationCache",
    "GqaKvCache",
    "HookError",
    "InvalidBitWidthError",
    "IoError",
    "KVCache",
    "KvCacheCompressor",
    "KvCacheConfig",
    "KvHeadView",
    "LayerKind",
    "LinearState",
    "MemoryStats",
    "MlaKvCache",
    "ModelKvCache",
    "MultiHeadKvCache",
    "NonFiniteInputError",
    "OddDimensionError",
    "OutOfMemoryError",
    "OwnedStream",
    "PagedDeviceAccounting",
    "PagedKv",
    "PagedKvCache",
    "PagedKvConfig",
    "PagedKvState",
    "PagedLayerGroups",
    "PagedLayerKind",
    "PagedLayout",
    "PagedPageName",
    "PagedPoolStats",
    "PagedSequenceState",
    "PagedSequenceStats",
    "PagedStepPlan",
    "PositionRun",
    "PrefixCacheStats",
    "PrefixHit",
    "ScoreEstimator",
    "ShapeError",
    "SlidingWindowKvCache",
    "Stream",
    "SupportsDLPack",
    "Tensor",
    "TensorLike",
    "TopK",
    "ZeroDimensionError",
    "ZeroProjectionsError",
    "available_devices",
    "backend_for",
    "cuda_built",
    "cuda_unavailable_reason",
    "deepseek_v3_cache",
    "from_dlpack",
    "gemma3_cache",
    "hf",
    "llama3_70b_cache",
    "llama3_8b_cache",
    "memory_stats",
    "transformer_lens",
]
