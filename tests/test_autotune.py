"""The measured choice between the kernels and the cuBLAS composite (``litelora_fast.op.autotune``),
tested on the CPU with an injected clock and a fake GPU name: selection, the disk cache (written,
re-read by a fresh process, keyed by machine and bucket, a corrupted file tolerated), the
``tune`` command, and that CPU calls of the op never time anything.
"""
import json
import os

import pytest
import torch

import litelora_fast as llf
from litelora_fast.op import autotune, backends
from litelora_fast.__main__ import main as cli_main
from litelora_fast.tools import tune

CPU = torch.device("cpu")
NEEDS = (True, False, False, True, True, False)


class FakeClock:
    """``timer(fn)``: milliseconds from a table by candidate; records what it was asked."""

    def __init__(self, ms, run=False):
        self.ms, self.run, self.asked = ms, run, []

    def __call__(self, fn):
        self.asked.append(fn.candidate)
        if self.run:
            fn()
        return self.ms[fn.candidate]


def _tuner(tmp_path, ms, gpu="Fake H200", run=False):
    ms.setdefault("hybrid", 9.5)          # (the hybrid loses unless a test says otherwise)
    clock = FakeClock(ms, run)
    machine = {"gpu": gpu, "torch": torch.__version__, "triton": "3.6.0"}
    return autotune.Tuner(str(tmp_path), timer=clock, machine=lambda d: dict(machine)), clock


def _key(n=300, r=8, dtype=torch.float16, per_row=False, needs=NEEDS):
    return autotune.bucket(n, 64, 32, r, dtype, per_row, needs)


def test_buckets_round_n_up_to_a_power_of_two_and_keep_the_rest():
    from litelora_fast.kernels.tuning import n_bucket     # (the one rounding rule)

    assert n_bucket(1) == 16 and n_bucket(17) == 32
    assert n_bucket(8192) == 8192 and n_bucket(8193) == 16384
    assert _key(n=300) == _key(n=512) != _key(n=513)
    assert len({_key(), _key(r=16), _key(dtype=torch.bfloat16), _key(per_row=True),
                _key(needs=(False,) * 6), autotune.bucket(300, 64, 32, 8, torch.float16, False,
                                                          NEEDS, dropout=True)}) == 6
    name = autotune.bucket_name(_key())
    assert name == "N512-Din64-Dout32-R8-float16-per_adapter-grad:x,lora_A,lora_B"
    assert autotune.bucket_name(_key(needs=(False,) * 6)).endswith("grad:none")
    assert autotune.bucket_name(autotune.bucket(300, 64, 32, 8, torch.float16, False, NEEDS,
                                                dropout=True)).endswith("lora_B-dropout")


@pytest.mark.parametrize("ms,winner", [({"triton": 1.0, "torch": 2.0}, "triton"),
                                       ({"triton": 3.0, "torch": 2.0}, "torch"),
                                       ({"triton": 2.0, "torch": 2.0}, "triton"),
                                       ({"triton": 3.0, "hybrid": 1.5, "torch": 2.0}, "hybrid"),
                                       ({"triton": 3.0, "hybrid": 2.0, "torch": 2.0}, "hybrid")])
def test_the_faster_candidate_wins_and_is_timed_once(ms, winner, tmp_path):
    tuner, clock = _tuner(tmp_path, ms)
    fns = {name: _fn(name) for name in autotune.CANDIDATES}
    assert tuner.choose(CPU, _key(), fns) == winner
    assert tuner.choose(CPU, _key(n=400), fns) == winner       # same bucket: not timed again
    assert clock.asked == list(autotune.CANDIDATES)
    assert tuner.lookup(CPU, _key()) == winner
    assert tuner.times[(CPU, _key())] == ms


def _fn(name):
    def fn():
        pass
    fn.candidate = name
    return fn


def test_the_cache_file_is_written_reread_and_keyed_by_machine(tmp_path):
    fns = {name: _fn(name) for name in autotune.CANDIDATES}
    tuner, _ = _tuner(tmp_path, {"triton": 3.0, "torch": 1.0})
    tuner.choose(CPU, _key(), fns)
    path = tuner.path(CPU)
    assert os.path.dirname(path) == str(tmp_path)
    data = json.load(open(path))
    assert data["machine"]["gpu"] == "Fake H200"
    assert data["entries"][autotune.bucket_name(_key())] == {
        "winner": "torch", "ms": {"triton": 3.0, "hybrid": 9.5, "torch": 1.0}}
    # A fresh process (new Tuner) on the same machine reads the winner without timing.
    again, clock = _tuner(tmp_path, {"triton": 0.1, "torch": 9.0})
    assert again.choose(CPU, _key(), fns) == "torch" and clock.asked == []
    # A second bucket is merged into the same file.
    again.choose(CPU, _key(r=16), fns)
    assert len(json.load(open(path))["entries"]) == 2
    # Another GPU (or torch/triton version) has its own file and tunes afresh.
    other, clock = _tuner(tmp_path, {"triton": 0.1, "torch": 9.0}, gpu="Fake H100")
    assert other.path(CPU) != path
    assert other.choose(CPU, _key(), fns) == "triton" and clock.asked == list(autotune.CANDIDATES)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1, "entries": [1]}),
                                     json.dumps([1, 2]), ""])
def test_a_corrupted_cache_file_is_tolerated_and_rewritten(content, tmp_path):
    fns = {name: _fn(name) for name in autotune.CANDIDATES}
    tuner, clock = _tuner(tmp_path, {"triton": 1.0, "torch": 2.0})
    path = tuner.path(CPU)
    with open(path, "w") as f:
        f.write(content)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert tuner.choose(CPU, _key(), fns) == "triton"
    assert clock.asked == list(autotune.CANDIDATES)
    assert json.load(open(path))["entries"][autotune.bucket_name(_key())]["winner"] == "triton"


def test_a_candidate_that_fails_loses(tmp_path):
    def broken():
        raise RuntimeError("no kernel for this shape")
    broken.candidate = "triton"

    def clock(fn):
        fn()
        return 5.0
    tuner = autotune.Tuner(str(tmp_path), timer=clock, machine=lambda d: {"gpu": "x"})
    with pytest.warns(RuntimeWarning, match="'triton' failed"):
        assert tuner.choose(CPU, _key(), {"triton": broken, "torch": _fn("torch")}) == "torch"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LITELORA_CACHE_DIR", str(tmp_path))
    assert autotune.cache_dir() == str(tmp_path)
    assert autotune.Tuner(machine=lambda d: {"gpu": "x"}).path(CPU).startswith(str(tmp_path))
    monkeypatch.delenv("LITELORA_CACHE_DIR")
    assert autotune.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache",
                                                "litelora_fast")


@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_cpu_calls_of_the_op_never_time(path, request, monkeypatch, seed):
    request.getfixturevalue(path)

    def no_timing(*args, **kwargs):
        raise AssertionError("a CPU call timed a candidate")
    monkeypatch.setattr(autotune.TUNER, "timer", no_timing)
    monkeypatch.setattr(autotune.TUNER, "choose", no_timing)
    monkeypatch.setattr(autotune.TUNER, "lookup", no_timing)
    x = torch.randn(5, 8, requires_grad=True)
    A, B = torch.randn(4, 8, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    y = llf.gated_lora_linear(x, torch.randn(6, 8), None, A, B, torch.rand(2))
    y.sum().backward()


def test_select_uses_the_tuned_winner_on_a_cuda_device(interpreter, monkeypatch, tmp_path):
    """``select`` on a (faked) CUDA tensor: timed once, then a lookup; LITELORA_AUTOTUNE=0 and a
    forced backend skip the tuner. (The device is faked: ``is_cuda`` on a CPU tensor.)"""
    tuner, clock = _tuner(tmp_path, {"triton": 2.0, "torch": 1.0})
    monkeypatch.setattr(autotune, "TUNER", tuner)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    class FakeCuda(torch.Tensor):
        is_cuda = True
        device = torch.device("cuda", 0)

    x = torch.randn(40, 16).as_subclass(FakeCuda)
    plan = llf.op.plan.pack((0, 1), torch.randn(6, 16), torch.randn(8, 6), [0, 2, 6], [1.0, 1.0],
                         torch.float32)
    gates2d = torch.rand(2).expand(40, 2)
    w = torch.randn(8, 16)
    assert autotune.select(x, w, plan, gates2d, NEEDS) is backends.TorchBackend
    assert autotune.select(x, w, plan, gates2d, NEEDS) is backends.TorchBackend
    assert clock.asked == list(autotune.CANDIDATES)
    # chosen_implementation asks the same rule: the tuned winner, None for an untuned bucket.
    assert autotune.chosen_implementation(40, 16, 8, 6, torch.float32, device="cuda:0") == "torch"
    assert autotune.chosen_implementation(40, 16, 8, 7, torch.float32, device="cuda:0") is None
    assert autotune.select(x, w, plan, gates2d, NEEDS, "triton") is backends.TritonBackend
    assert autotune.select(x, w, plan, gates2d, NEEDS, "hybrid") is backends.HybridBackend
    monkeypatch.setenv("LITELORA_AUTOTUNE", "0")
    assert autotune.select(x, w, plan, gates2d, (False,) * 6) is backends.TritonBackend
    assert clock.asked == list(autotune.CANDIDATES)


def test_chosen_implementation_off_cuda_is_the_fixed_rule(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert autotune.chosen_implementation(64, 32, 32, 8, torch.float32, device="cpu") == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert autotune.chosen_implementation(64, 32, 32, 8, torch.float32, device="cpu") == "triton"
    assert autotune.chosen_implementation(64, 32, 32, 8, torch.bfloat16, device="cpu") == "torch"
    assert autotune.chosen_implementation(64, 32, 32, 8, torch.float64, device="cpu") == "torch"
    assert autotune.chosen_implementation(0, 32, 32, 8, torch.float32, device="cpu") == "torch"


def test_tune_command_tunes_each_shape_and_adapter_count(fast_path, tmp_path, capsys):
    """With a fake clock that also runs each candidate once (the workloads really run)."""
    tuner, clock = _tuner(tmp_path, {"triton": 2.0, "torch": 1.0}, run=True)
    assert tune.main(["--shape", "40,16,8", "--shape", "33,16,12", "--rank", "2",
                      "--adapters", "1,3", "--dtype", "fp32", "--device", "cpu"],
                     tuner=tuner) == 0
    out = capsys.readouterr().out
    assert clock.asked == list(autotune.CANDIDATES) * 4
    assert "N64-Din16-Dout8-R2-float32-per_adapter-grad:x,lora_A,lora_B" in out
    assert "N64-Din16-Dout12-R6-float32" in out and out.count(" torch ") >= 4
    assert f"cache: {tuner.path(CPU)}" in out
    assert len(json.load(open(tuner.path(CPU)))["entries"]) == 4


def test_tune_command_dry_run_and_errors(capsys):
    assert cli_main(["tune", "--shape", "8192,4096,4096", "--adapters", "1,8",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "N8192-Din4096-Dout4096-R16-bfloat16" in out and "R128" in out
    assert cli_main(["tune", "--shape", "1,2"]) == 2
    assert "--shape must be N,D_in,D_out" in capsys.readouterr().err
    assert cli_main(["tune", "--shape", "8,4,4"]) == 2           # no GPU here
    assert "CUDA GPU" in capsys.readouterr().err
    assert cli_main(["tune"]) == 2


def test_tune_command_reads_a_model_config(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")   # the peft extra; not our code
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, vocab_size=50)
    cfg.save_pretrained(tmp_path)
    assert tune.main(["--model", str(tmp_path), "--target", "query,value,intermediate.dense",
                      "--tokens", "1000", "--rank", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "N1024-Din32-Dout32-R4" in out
    assert out.count("N1024-Din32-Dout32-R4") == 1       # query and value share one bucket
    with pytest.raises(ValueError, match="no nn.Linear"):
        tune.main(["--model", str(tmp_path), "--target", "q_proj", "--dry-run"])
