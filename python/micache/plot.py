"""Pictures of caches with matplotlib (an optional dependency: ``pip install micache[plot]``).

Importing this module imports matplotlib; ``micache`` itself does not (it
imports ``micache.plot`` on first use of ``micache.plot``). Figures are made
with ``matplotlib.figure.Figure``, outside pyplot's global state, unless the
caller passes its own Axes.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._micache import AttentionCache, Device


def _heads_label(heads: Optional[Sequence[int]], n_heads: int) -> str:
    """``head 2``, ``mean of heads 0, 2`` or ``mean of heads 0-11`` (all of them)."""
    if heads is None:
        return f"mean of heads 0-{n_heads - 1}" if n_heads > 1 else "head 0"
    if len(heads) == 1:
        return f"head {heads[0]}"
    return "mean of heads " + ", ".join(map(str, heads))


def attention_heatmap(
    cache: AttentionCache,
    layer: int,
    tokens: Optional[Sequence[str]] = None,
    head: Union[int, Sequence[int], None] = None,
    *,
    batch: int = 0,
    ax: Optional[Axes] = None,
    cmap: str = "viridis",
) -> Figure:
    """A heatmap of ``layer``'s attention pattern: queries down, keys across.

    ``head``: one head, a list of heads (their mean) or None (the mean of every
    head). The values are ``cache.head_mean(layer, batch=batch, heads=...)``,
    the same numbers as every other head-mean query of micache, copied to the
    host. ``tokens`` label the keys, ``seq_k`` strings; the queries get the
    last ``seq_q`` of them (all of them for a prompt, where seq_q == seq_k);
    without tokens both axes show positions. The title names the layer and
    heads, and a colour bar gives the scale (0 to the largest weight).

    Draws into ``ax`` when given (its figure is returned), else into a new
    Figure of a size that fits the labels. Returns the Figure: display it as a
    notebook cell's value or write it with ``savefig``.

    Errors: those of ``head_mean`` (``HookError`` for layer, batch or head
    out of range); ValueError when ``len(tokens) != seq_k``
    (``3 tokens for a pattern of seq_k=4``).
    """
    heads = [head] if isinstance(head, int) else (None if head is None else list(head))
    mean = cache.head_mean(layer, batch=batch, heads=heads)
    weights = np.from_dlpack(mean if mean.device.is_cpu else mean.to(Device.cpu()))
    seq_q, seq_k = weights.shape
    if tokens is None:
        key_labels = [str(position) for position in range(seq_k)]
    elif len(tokens) != seq_k:
        raise ValueError(f"{len(tokens)} tokens for a pattern of seq_k={seq_k}")
    else:
        key_labels = [str(token) for token in tokens]
    query_labels = key_labels[seq_k - seq_q :]

    if ax is None:
        side = min(max(4.0, 0.35 * max(seq_q, seq_k) + 2.0), 24.0)
        figure = Figure(figsize=(side + 1.2, side), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    image = ax.imshow(weights, cmap=cmap, vmin=0.0, interpolation="nearest", aspect="equal")
    ax.set_xticks(range(seq_k), key_labels, rotation=90)
    ax.set_yticks(range(seq_q), query_labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    n_heads = cache.get_layer(layer).shape[1]
    ax.set_title(f"Layer {layer}, {_heads_label(heads, n_heads)}")
    figure.colorbar(image, ax=ax, label="attention weight")
    return figure


__all__ = ["attention_heatmap"]
