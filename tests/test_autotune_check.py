"""The tuner checks what it picks (``autotune.Tuner.check``): every candidate's outputs on the
tuning inputs are compared with the cuBLAS composite's, and one beyond the dtype's bound loses
with a warning naming the bucket, recorded in the cache file and in ``timings()``. On the CPU
with a fake clock: planted wrong candidates, and the real workloads with a planted wrong backend.
"""
import json

import pytest
import torch

from litelora_fast.op import autotune, backends

CPU = torch.device("cpu")
NEEDS = (True, False, False, True, True, False)


class FastestFirst:
    """A fake clock: the kernels are fastest, then the hybrid, then the composite."""

    MS = {"triton": 1.0, "hybrid": 2.0, "torch": 3.0}

    def __init__(self):
        self.asked = []

    def __call__(self, fn):
        self.asked.append(fn.candidate)
        return self.MS[fn.candidate]


def _tuner(tmp_path):
    clock = FastestFirst()
    machine = {"gpu": "Fake H200", "torch": torch.__version__, "triton": "3.6.0"}
    return autotune.Tuner(str(tmp_path), timer=clock, machine=lambda d: dict(machine)), clock


def _returning(name, outputs):
    def fn():
        return [o.clone() if o is not None else None for o in outputs]
    fn.candidate = name
    return fn


def _outputs(seed=0, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g).to(dtype), None,
            torch.randn(8, 32, generator=g).to(dtype)]


@pytest.mark.parametrize("dtype,scale", [(torch.float16, 1.01), (torch.bfloat16, 1.05),
                                         (torch.float32, 1.0001)])
def test_a_planted_wrong_candidate_loses_and_is_recorded(tmp_path, dtype, scale):
    ref = _outputs(dtype=dtype)
    wrong = [o * scale if o is not None else None for o in ref]
    key = autotune.bucket(64, 32, 32, 8, dtype, False, NEEDS)
    name = autotune.bucket_name(key)
    tuner, clock = _tuner(tmp_path)
    with pytest.warns(RuntimeWarning, match=f"'triton' on {name} differs"):
        winner = tuner.choose(CPU, key, {"triton": _returning("triton", wrong),
                                         "hybrid": _returning("hybrid", ref),
                                         "torch": _returning("torch", ref)})
    assert winner == "hybrid"                    # the fastest correct one
    assert clock.asked == ["hybrid", "torch"]    # the wrong one is not timed
    record = autotune.Tuner.timings(tuner)[name]
    assert record["wrong"] == ["triton"] and record["times"]["triton"] is None
    assert record["rel_err"]["triton"] == pytest.approx(scale - 1, rel=0.05)
    assert record["rel_err"]["hybrid"] == 0.0
    entry = json.load(open(tuner.path(CPU)))["entries"][name]
    assert entry["wrong"] == ["triton"] and entry["ms"]["triton"] is None
    # A fresh process reads the verdict back with the winner.
    fresh, _ = _tuner(tmp_path)
    assert fresh.lookup(CPU, key) == "hybrid"
    assert fresh.timings()[name]["wrong"] == ["triton"]


def test_candidates_within_the_bound_keep_the_timing_verdict(tmp_path):
    ref = _outputs()
    close = [o * (1 + 5e-4) if o is not None else None for o in ref]   # under fp16's 2e-3
    key = autotune.bucket(64, 32, 32, 8, torch.float16, False, NEEDS)
    tuner, clock = _tuner(tmp_path)
    assert tuner.choose(CPU, key, {"triton": _returning("triton", close),
                                   "hybrid": _returning("hybrid", close),
                                   "torch": _returning("torch", ref)}) == "triton"
    assert clock.asked == list(autotune.CANDIDATES)
    assert tuner.timings()[autotune.bucket_name(key)]["wrong"] == []
    assert 2e-4 < tuner.timings()[autotune.bucket_name(key)]["rel_err"]["triton"] < 2e-3


def test_rel_err_catches_missing_and_non_finite_outputs():
    ref = _outputs()
    assert autotune.rel_err(ref, ref) == 0.0
    poisoned = [ref[0].clone(), None, ref[2].clone()]
    poisoned[0][3, 4] = float("nan")
    assert autotune.rel_err(poisoned, ref) == float("inf")
    assert autotune.rel_err([ref[0], None, None], ref) == float("inf")
    assert autotune.rel_err([ref[0][:4], None, ref[2]], ref) == float("inf")


class _WrongForward(backends.TritonBackend):
    """The kernels' backend with a planted bug: the forward drops its last output column."""

    name = "triton"

    @staticmethod
    def fused_forward(x2d, weight, bias, SG, lora_B):
        y = backends.TritonBackend.fused_forward(x2d, weight, bias, SG, lora_B)
        y[:, -1] = 0
        return y


def test_the_real_workloads_catch_a_planted_wrong_backend(tmp_path, monkeypatch):
    """``tune_shape`` runs every backend's forward and backward on the tuning inputs (the
    kernels under the interpreter, fp32); the planted one loses to the hybrid."""
    if not backends.interpreter_requested():
        pytest.skip("the kernels run on the CPU only under TRITON_INTERPRET=1")
    monkeypatch.setitem(backends.BACKENDS, "triton", _WrongForward)
    tuner, clock = _tuner(tmp_path)
    with pytest.warns(RuntimeWarning, match="'triton' on N64-Din16-Dout12-R4-float32"):
        key, winner = autotune.tune_shape(40, 16, 12, [2, 2], torch.float32, device="cpu",
                                          tuner=tuner)
    assert winner == "hybrid"
    errs = tuner.timings()[autotune.bucket_name(key)]["rel_err"]
    assert errs["triton"] > 1e-2 and errs["hybrid"] < autotune.AGREEMENT_BOUND["float32"]


def test_the_bound_follows_torchs_tf32_switch(monkeypatch):
    from litelora_fast.kernels import tuning

    assert autotune.agreement_bound("float32", CPU) == 1e-5
    monkeypatch.setattr(tuning, "torch_allows_tf32", lambda: True)
    assert autotune.agreement_bound("float32", torch.device("cuda", 0)) == 1e-2
    assert autotune.agreement_bound("bfloat16", torch.device("cuda", 0)) == 2e-2
