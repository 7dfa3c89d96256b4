"""micache.plot.attention_heatmap: labels, colour bar, title, and the head-mean numbers (skipped without matplotlib)."""

from __future__ import annotations

import numpy as np
import pytest

import micache

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed: the picture tests need it")
matplotlib.use("Agg")

from micache.plot import attention_heatmap  # noqa: E402

TOKENS = ["<bos>", "The", " cat", " sat"]


def labels(ticks) -> list[str]:
    return [tick.get_text() for tick in ticks]


def test_plot_is_imported_on_first_use() -> None:
    assert micache.plot.attention_heatmap is attention_heatmap


def test_heatmap_labels_keys_across_and_queries_down(attention) -> None:
    ax = attention_heatmap(attention, 1, tokens=TOKENS).axes[0]
    assert labels(ax.get_xticklabels()) == TOKENS
    assert labels(ax.get_yticklabels()) == TOKENS
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key", "query")


def test_heatmap_has_a_colour_bar(attention) -> None:
    figure = attention_heatmap(attention, 0, tokens=TOKENS)
    image = figure.axes[0].images[0]
    assert image.colorbar is not None
    assert image.colorbar.ax in figure.axes
    assert image.colorbar.ax.get_ylabel() == "attention weight"


def test_heatmap_title_names_the_layer_and_every_head_by_default(attention) -> None:
    assert attention_heatmap(attention, 1).axes[0].get_title() == "Layer 1, mean of heads 0-2"


def test_heatmap_title_names_one_head(attention) -> None:
    assert attention_heatmap(attention, 0, head=2).axes[0].get_title() == "Layer 0, head 2"


def test_heatmap_title_names_a_list_of_heads(attention) -> None:
    assert attention_heatmap(attention, 0, head=[0, 2]).axes[0].get_title() == "Layer 0, mean of heads 0, 2"


def test_heatmap_shows_the_caches_head_mean(attention) -> None:
    image = attention_heatmap(attention, 1, head=[0, 2], batch=1).axes[0].images[0]
    want = np.from_dlpack(attention.head_mean(1, batch=1, heads=[0, 2]))
    np.testing.assert_array_equal(image.get_array(), want)


def test_heatmap_labels_positions_without_tokens(attention) -> None:
    ax = attention_heatmap(attention, 0).axes[0]
    assert labels(ax.get_xticklabels()) == ["0", "1", "2", "3"]


def test_heatmap_labels_decode_queries_with_the_last_tokens(rng) -> None:
    cache = micache.AttentionCache()
    cache.push(rng.random((1, 2, 1, 4), dtype=np.float32))
    ax = attention_heatmap(cache, 0, tokens=TOKENS).axes[0]
    assert labels(ax.get_yticklabels()) == [" sat"]


def test_heatmap_draws_into_a_given_axes(attention) -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    ax = figure.add_subplot()
    assert attention_heatmap(attention, 0, ax=ax) is figure
    assert ax.images


def test_heatmap_needs_one_token_per_key(attention) -> None:
    with pytest.raises(ValueError, match=r"^3 tokens for a pattern of seq_k=4$"):
        attention_heatmap(attention, 0, tokens=TOKENS[:3])


def test_heatmap_of_a_missing_layer_is_a_hook_error(attention) -> None:
    with pytest.raises(micache.HookError, match=r"^layer 2 not in attention cache$"):
        attention_heatmap(attention, 2)


def test_heatmap_of_a_missing_head_is_a_hook_error(attention) -> None:
    with pytest.raises(micache.HookError, match=r"^head 3 out of range \(heads=3\)$"):
        attention_heatmap(attention, 0, head=3)


def test_heatmap_writes_a_png(tmp_path, rng) -> None:
    tokens = ["<bos>", "When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave"]
    scores = np.tril(rng.random((1, 4, 12, 12), dtype=np.float32) ** 4) + np.eye(12, dtype=np.float32) * 0.2
    cache = micache.AttentionCache()
    cache.push(np.ascontiguousarray(scores / scores.sum(axis=-1, keepdims=True)))
    path = tmp_path / "heatmap.png"
    attention_heatmap(cache, 0, tokens=tokens).savefig(path, dpi=100)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
