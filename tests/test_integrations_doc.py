"""docs/integrations.md runs: its Python blocks, in order, in one namespace (fast path)."""
import pathlib
import re

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("bitsandbytes")

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "integrations.md"


def test_every_python_block_of_the_integration_guide_runs(fast_path, capsys):
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.M | re.S)
    assert len(blocks) >= 8
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
    assert "trainable params: 7,424" in capsys.readouterr().out
