"""The installed package: stubs, typing marker, docstrings from the C++ headers, exports."""

from __future__ import annotations

from pathlib import Path

import micache


def test_the_package_ships_stubs_and_the_typed_marker() -> None:
    folder = Path(micache.__file__).parent
    assert (folder / "py.typed").exists()
    stub = (folder / "_micache.pyi").read_text()
    assert "class KVCache:" in stub
    assert "def append(self, layer: int, new_keys: micache.TensorLike, new_values: micache.TensorLike) -> None:" in stub


def test_docstrings_are_the_headers_doc_comments() -> None:
    assert "used as a ring over the sequence axis" in micache.KVCache.__doc__
    assert "after the layer's last token" in micache.KVCache.append.__doc__
    assert "Reads heads * seq_k elements" in micache.AttentionCache.attention_from_position.__doc__
    assert micache.ErrorCode.Hook.__doc__.startswith("layer, position, batch or head out of range")


def test_every_exported_name_exists() -> None:
    assert all(hasattr(micache, name) for name in micache.__all__)
    assert micache.__version__ == "0.1.0"
