"""TransformerLens bridge: micache caches from and to ``run_with_cache``'s hook dictionaries.

``model.run_with_cache(tokens)`` returns a cache mapping hook names to
tensors; micache reads the two layouts its caches hold, under
TransformerLens's names (the same names ``save`` writes, so files cross too):

* ``blocks.{i}.attn.hook_pattern``: ``[batch, heads, seq_q, seq_k]``, one
  :class:`~micache.AttentionCache` layer per block;
* ``blocks.{i}.hook_resid_post`` (or another residual hook):
  ``[batch, pos, d_model]``, one batch row of which becomes a
  ``[seq_len, d_model]`` :class:`~micache.FullActivationCache` layer
  (``[pos, d_model]`` as ``run_with_cache(..., remove_batch_dim=True)`` gives
  it is taken as it is).

Values are any DLPack producer (PyTorch on the CPU or a GPU, numpy) and go in
without a copy where micache can read them in place. Hooks of other names are
ignored. Neither TransformerLens nor PyTorch is imported.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Union

from ._micache import AttentionCache, FullActivationCache, Stream, Tensor
from .errors import Error, ShapeError

PATTERN_HOOK = "attn.hook_pattern"
"""The attention pattern's hook under ``blocks.{i}.``."""

RESIDUAL_HOOK = "hook_resid_post"
"""The residual hook ``FullActivationCache`` reads by default (and ``save`` writes)."""


def hook_name(layer: int, hook: str) -> str:
    """TransformerLens's full name of ``hook`` in block ``layer``: ``blocks.{layer}.{hook}``."""
    return f"blocks.{layer}.{hook}"


def _layer_names(hooks: Any, hook: str) -> list[str]:
    """The names ``blocks.0.{hook}``, ``blocks.1.{hook}``, ... in ``hooks``, checked to leave no gap.

    Errors: ValueError when no layer has the hook (``no blocks.{i}.attn.hook_pattern
    in hooks``) or a layer below the highest is missing (``blocks.1.attn.hook_pattern
    missing: hooks hold layers 0, 2``).
    """
    pattern = re.compile(r"blocks\.(\d+)\." + re.escape(hook))
    layers = sorted(int(m.group(1)) for m in map(pattern.fullmatch, hooks.keys()) if m)
    if not layers:
        raise ValueError(f"no blocks.{{i}}.{hook} in hooks")
    missing = sorted(set(range(layers[-1] + 1)) - set(layers))
    if missing:
        held = ", ".join(map(str, layers))
        raise ValueError(f"{hook_name(missing[0], hook)} missing: hooks hold layers {held}")
    return [hook_name(layer, hook) for layer in layers]


def _named(name: str, err: Error) -> Error:
    """``err`` again, of the same class, with ``name: `` before its message."""
    return type(err)(f"{name}: {err}")


def attention_cache_from_hooks(hooks: Any, *, stream: Optional[Stream] = None) -> AttentionCache:
    """An AttentionCache of every ``blocks.{i}.attn.hook_pattern`` in ``hooks``, layer order.

    ``hooks`` is a dict of hook name to tensor or TransformerLens's
    ``ActivationCache`` (anything with ``keys()`` and ``[name]``); each pattern
    is ``[batch, heads, seq_q, seq_k]`` and is pushed without a copy where
    micache can read it in place. The cache's queries run on ``stream`` (the
    default stream when None).

    Errors: ValueError for no pattern or a missing layer (see module
    docstring); the errors of ``AttentionCache.push``, their message prefixed
    by the hook's name (``ShapeError``: ``blocks.1.attn.hook_pattern: pattern
    must be [batch, heads, seq_q, seq_k], got rank 3 [3, 4, 4]``, as
    ``remove_batch_dim=True`` gives it).
    """
    names = _layer_names(hooks, PATTERN_HOOK)
    cache = AttentionCache.with_capacity(len(names), Stream() if stream is None else stream)
    for name in names:
        try:
            cache.push(hooks[name])
        except Error as err:
            raise _named(name, err) from err
    return cache


def full_activation_cache_from_hooks(
    hooks: Any, *, hook: str = RESIDUAL_HOOK, batch: int = 0, stream: Optional[Stream] = None
) -> FullActivationCache:
    """A FullActivationCache of every ``blocks.{i}.{hook}`` in ``hooks``, layer order.

    Each value is ``[batch, pos, d_model]``, of which row ``batch`` becomes the
    layer's ``[seq_len, d_model]`` (a view, no copy), or already ``[pos,
    d_model]``. ``hooks`` is as for :func:`attention_cache_from_hooks`; device
    work runs on ``stream`` (the default stream when None).

    Errors: ValueError for no such hook or a missing layer; ``HookError`` when
    ``batch`` is out of range; ``ShapeError`` for a rank other than 2 or 3;
    the errors of ``FullActivationCache.push`` (layers of different shapes,
    dtypes or devices). Each message is prefixed by the hook's name.
    """
    names = _layer_names(hooks, hook)
    cache = FullActivationCache.with_capacity(len(names), Stream() if stream is None else stream)
    for name in names:
        try:
            layer = Tensor(hooks[name])
            if layer.rank == 3:
                layer = layer.select(batch)
            elif layer.rank != 2:
                raise ShapeError(f"expected [batch, pos, d_model] or [pos, d_model], got shape {list(layer.shape)}")
            cache.push(layer)
        except Error as err:
            raise _named(name, err) from err
    return cache


def to_hook_dict(
    cache: Union[AttentionCache, FullActivationCache],
    *,
    hook: str = RESIDUAL_HOOK,
    batch_dim: bool = True,
    convert: Optional[Callable[[Tensor], Any]] = None,
) -> dict[str, Any]:
    """The hook dictionary ``run_with_cache`` would give for ``cache``'s layers.

    An AttentionCache gives ``blocks.{i}.attn.hook_pattern`` ``[batch, heads,
    seq_q, seq_k]``; a FullActivationCache gives ``blocks.{i}.{hook}``,
    ``[1, seq_len, d_model]`` with ``batch_dim`` (TransformerLens's layout)
    or ``[seq_len, d_model]`` without. Each value is ``convert(tensor)``
    (``torch.from_dlpack``, ``np.from_dlpack``) or, when None, the
    ``micache.Tensor`` itself; either way it shares the cache's storage (no copy).

    Error: TypeError for any other cache.
    """
    if isinstance(cache, AttentionCache):
        tensors = {hook_name(i, PATTERN_HOOK): pattern for i, pattern in enumerate(cache.patterns)}
    elif isinstance(cache, FullActivationCache):
        layers = [cache.get_layer(i) for i in range(cache.n_layers)]
        tensors = {
            hook_name(i, hook): layer.reshape([1, *layer.shape]) if batch_dim else layer
            for i, layer in enumerate(layers)
        }
    else:
        raise TypeError(f"expected an AttentionCache or a FullActivationCache, got {type(cache).__name__}")
    if convert is None:
        return tensors
    return {name: convert(tensor) for name, tensor in tensors.items()}


__all__ = [
    "PATTERN_HOOK",
    "RESIDUAL_HOOK",
    "attention_cache_from_hooks",
    "full_activation_cache_from_hooks",
    "hook_name",
    "to_hook_dict",
]
