"""Shared fixtures: small random patterns and key/value tensors, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

import micache


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def pattern(rng: np.random.Generator) -> np.ndarray:
    """A softmax-like attention pattern [batch=2, heads=3, seq_q=4, seq_k=4], float32."""
    scores = rng.random((2, 3, 4, 4), dtype=np.float32)
    return scores / scores.sum(axis=-1, keepdims=True)


@pytest.fixture
def attention(pattern: np.ndarray) -> micache.AttentionCache:
    """Two layers of `pattern` (the second scaled by 2)."""
    cache = micache.AttentionCache()
    cache.push(pattern)
    cache.push(np.ascontiguousarray(pattern * 2))
    return cache


@pytest.fixture
def config() -> micache.KvCacheConfig:
    return micache.KvCacheConfig(head_dim=8, bits=4, projections=8, seed=3)


@pytest.fixture
def cpu_backend() -> micache.Backend:
    """The CPU backend, with any armed fault disarmed afterwards."""
    backend = micache.backend_for(micache.Device.cpu())
    yield backend
    backend.fail_allocation_after(0)
