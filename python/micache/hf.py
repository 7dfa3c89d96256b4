"""Hugging Face bridge: a KVCache from and to ``past_key_values``.

Hugging Face models keep, per layer, a key and a value tensor ``[batch,
kv_heads, seq_len, head_dim]``, the layout :class:`~micache.KVCache` holds
(and writes to files as ``blocks.{i}.attn.k_cache`` / ``v_cache``). The
legacy ``past_key_values`` is a sequence of ``(key, value)`` pairs;
``transformers``' cache objects hold the same tensors as ``key_cache`` and
``value_cache`` lists (``DynamicCache`` before transformers 4.56) or as
``layers`` whose items have ``keys`` and ``values`` (from 4.56). All three
are read here without importing transformers or PyTorch; tensors are any
DLPack producer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._micache import KVCache, Stream, Tensor
from .errors import Error


def _layer_pairs(past_key_values: Any) -> list[tuple[Any, Any]]:
    """The ``(key, value)`` of every layer of any of the three layouts; None for an empty layer.

    Error: ValueError when an item of a sequence is not a pair
    (``layer 1: expected a (key, value) pair, got 3 items``).
    """
    if hasattr(past_key_values, "layers"):
        return [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in past_key_values.layers]
    if hasattr(past_key_values, "key_cache") and hasattr(past_key_values, "value_cache"):
        return list(zip(past_key_values.key_cache, past_key_values.value_cache))
    pairs = []
    for layer, pair in enumerate(past_key_values):
        if pair is None:
            pairs.append((None, None))
            continue
        items = tuple(pair)
        if len(items) != 2:
            raise ValueError(f"layer {layer}: expected a (key, value) pair, got {len(items)} items")
        pairs.append(items)
    return pairs


def kv_cache_from_past_key_values(past_key_values: Any, *, stream: Optional[Stream] = None) -> KVCache:
    """A KVCache holding a copy of every layer's keys and values.

    ``past_key_values``: a sequence of ``(key, value)`` pairs, or an object with
    ``key_cache`` and ``value_cache`` lists, or with ``layers`` of objects
    with ``keys`` and ``values``; every tensor ``[batch, kv_heads, seq_len,
    head_dim]``, keys and values of a layer of the same shape. A layer given
    as None (or whose keys are None, as a layer ``transformers`` has not
    filled yet) stays empty. Positions are 0..seq_len-1. The cache works on
    ``stream`` (the default stream when None).

    Errors: ValueError for an item that is not a pair; the errors of
    ``KVCache.set_layer``, their message prefixed by the layer (``ShapeError``:
    ``layer 0: set_layer: keys must be [batch, kv_heads, seq_len, head_dim],
    got rank 3 [1, 4, 8]``).
    """
    pairs = _layer_pairs(past_key_values)
    cache = KVCache(len(pairs), Stream() if stream is None else stream)
    for layer, (keys, values) in enumerate(pairs):
        if keys is None and values is None:
            continue
        try:
            cache.set_layer(layer, keys, values)
        except Error as err:
            raise type(err)(f"layer {layer}: {err}") from err
    return cache


def kv_cache_to_past_key_values(
    cache: KVCache, *, convert: Optional[Callable[[Tensor], Any]] = None
) -> list[tuple[Any, Any]]:
    """Every layer's ``(keys, values)``, ``[batch, kv_heads, seq_len, head_dim]`` each, layer order.

    Each tensor is ``convert(tensor)`` (``torch.from_dlpack``,
    ``np.from_dlpack``) or, when None, the ``micache.Tensor``; it shares the
    cache's storage when the layer's ring is dense (see ``KVCache.keys``),
    so copy it before the cache changes if it must stay as it is. For
    ``transformers``, ``DynamicCache.from_legacy_cache(tuple(pairs))`` makes
    a cache object of the pairs.

    Error: ValueError when a layer is empty (``layer 2 is empty:
    past_key_values needs keys and values for every layer``).
    """
    pairs = []
    for layer in range(cache.n_layers):
        keys, values = cache.keys(layer), cache.values(layer)
        if keys is None or values is None:
            raise ValueError(f"layer {layer} is empty: past_key_values needs keys and values for every layer")
        pairs.append((keys, values) if convert is None else (convert(keys), convert(values)))
    return pairs


__all__ = ["kv_cache_from_past_key_values", "kv_cache_to_past_key_values"]
