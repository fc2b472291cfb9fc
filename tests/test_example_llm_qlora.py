"""``examples/llm_qlora.py --fast`` end to end: a 4-bit (bitsandbytes, CPU) Llama from a config,
a ``LoraConfig`` injection, one HF ``Trainer`` run with gradient checkpointing, adapter-only
checkpoints and two routed tenants, an exact resume, routed ``generate`` and a merge on a
non-quantized copy."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("bitsandbytes")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "llm_qlora.py"


def test_llm_qlora_fast(fast_path, tmp_path):
    spec = importlib.util.spec_from_file_location("llm_qlora", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--fast", "--out", str(tmp_path)])
    assert result["resume_identical"]
    # The checkpoint's model file holds the two banks, not the base.
    assert result["model_file_bytes"] < result["base_bytes"]
    assert result["merge_rel_err"] < 1e-5
    assert 0 < result["trainable"] < result["total"]
    assert len(result["generate_accuracy"]) == 2
