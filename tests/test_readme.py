"""The README as a user meets it: every Python block runs as written, in order, in one
namespace (on the CPU fast path); it stays under 250 lines; every relative link resolves."""
import pathlib
import re

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_python_block_runs_as_written(fast_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 5, "the quickstarts (op, module, HF model, routing, LiteLoRA)"
    torch.manual_seed(0)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)


def test_at_most_250_lines():
    assert README.count("\n") <= 250


def test_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert links
    missing = [link for link in links
               if not link.startswith(("http://", "https://")) and not (ROOT / link).exists()]
    assert not missing, missing
