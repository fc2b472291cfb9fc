"""A pytest plugin that runs another project's tests (PEFT's) with ``llf.patch_peft()`` applied.

Loaded by ``tools/run_peft_suite.py`` as ``-p llf_peft_plugin`` (this folder on ``PYTHONPATH``).
Environment:

- ``LLF_PEFT_PATCH=1``: ``llf.patch_peft()`` when the test run starts (before any test module is
  imported), and at the end the session fails unless our op really ran (``OP_CALLS``: a patched
  run that never reached the op would prove nothing). ``0``: PEFT as it is.
- ``LLF_IDS_CONTAIN``: keep only the collected tests whose id contains this string
  (``-LoraConfig-``: ``-k`` matches substrings, so ``-k LoraConfig`` also picks ``AdaLoraConfig``).
- ``LLF_COUNTS_FILE``: where to write the op's call counts as JSON.
"""
from __future__ import annotations

import json
import os

import pytest


def _patched() -> bool:
    return os.environ.get("LLF_PEFT_PATCH", "0") == "1"


def pytest_configure(config):
    if _patched():
        import litelora_fast as llf

        llf.patch_peft()


def pytest_collection_modifyitems(config, items):
    needle = os.environ.get("LLF_IDS_CONTAIN")
    if not needle:
        return
    keep = [it for it in items if needle in it.nodeid]
    dropped = [it for it in items if needle not in it.nodeid]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def _counts() -> dict:
    from litelora_fast import peft_patch_layers

    return dict(peft_patch_layers.OP_CALLS)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if not _patched():
        return
    counts = _counts()
    path = os.environ.get("LLF_COUNTS_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(counts, f)
    if counts.get("fused", 0) + counts.get("lora_only", 0) == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _patched():
        from litelora_fast import peft_patch_layers

        terminalreporter.write_line(f"litelora_fast patch_peft: op calls {_counts()}")
        for reason, n in peft_patch_layers.FALLBACK_REASONS.most_common():
            terminalreporter.write_line(f"  PEFT's forward, {n} calls: {reason}")
