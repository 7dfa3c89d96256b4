"""The README's Python example runs as written, from the repository root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_python_block() -> str:
    """The README's first ```python block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert found, "README.md has no ```python block"
    return found.group(1)


def test_the_readme_example_runs_and_draws_its_heatmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: the example draws a heatmap")
    pytest.importorskip("safetensors", reason="safetensors is not installed: the example reads the fixture with it")
    code = readme_python_block().replace('"tests/data/', f'"{ROOT / "tests" / "data"}/')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert (tmp_path / "minilm_layer3.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert printed.startswith("[(")
    assert printed.count("(") == 3  # three (token, weight) pairs
