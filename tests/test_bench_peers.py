"""The benchmark's peer (b) (``benchmarks/peers.py``) is fair: bound once to its bank, a forward
and backward make no host sync (counted on the CPU by patching every Python-level way a tensor
reaches the host), ``repeat_interleave`` gets its ``output_size``, and it computes the layer's
function (float64 reference), with LoRA dropout on the mask it drew. The GPU's own word on syncs
is ``benchmarks/gpu/gpu_steady.py`` (peer (b) under ``torch.cuda.set_sync_debug_mode("error")``).
"""
import contextlib
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks",
                                "gpu"))

import harness  # noqa: E402
import peers  # noqa: E402
from cases import Case, make_inputs  # noqa: E402
from numerics import assert_rel  # noqa: E402

from litelora_fast.op.reference import gated_lora_linear_ref  # noqa: E402

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counted_host_reads():
    """``with counted_host_reads() as calls:``: every Tensor method that brings a value to the
    host, and ``torch.tensor`` built from Python data (a host-to-device copy on CUDA), appends
    its name to ``calls``; so does ``repeat_interleave`` with tensor repeats but no
    ``output_size`` (a device sync on CUDA)."""
    calls, saved = [], {}
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)
        saved[name] = real

        def wrapper(self, *a, _real=real, _name=name, **kw):
            calls.append(_name)
            return _real(self, *a, **kw)
        setattr(torch.Tensor, name, wrapper)
    real_tensor, real_ri = torch.tensor, torch.repeat_interleave

    def tensor(*a, **kw):
        calls.append("torch.tensor")
        return real_tensor(*a, **kw)

    def repeat_interleave(input, repeats=None, *a, **kw):
        if torch.is_tensor(repeats) and kw.get("output_size") is None:
            calls.append("repeat_interleave without output_size")
        return real_ri(input, repeats, *a, **kw)
    torch.tensor, torch.repeat_interleave = tensor, repeat_interleave
    try:
        yield calls
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)
        torch.tensor, torch.repeat_interleave = real_tensor, real_ri


CASES = [Case(64, 48, 40, 4, 4, dtype="float32", device="cpu"),
         Case(64, 48, 40, 4, 4, sparsity=0.5, dtype="float32", device="cpu"),   # skips adapters
         Case(64, 48, 40, 4, 4, train_gates=True, dtype="float32", device="cpu"),
         Case(64, 48, 40, 3, 4, dropout=0.2, dtype="float32", device="cpu")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_packed_peer_makes_no_host_sync_per_call(case, seed, fast_path):
    inp = make_inputs(case, seed)
    forward = peers.bind("packed", inp.args(), case.dropout)   # host work once, here
    forward()
    with counted_host_reads() as calls:
        for _ in range(2):
            y = forward()
            torch.autograd.grad(y, inp.grad_inputs(), inp.dy)
    assert calls == []


def test_the_counter_sees_the_old_peers_syncs(seed, fast_path):
    # the host reads the old peer (b) made per call are what the counter catches
    inp = make_inputs(CASES[1], seed)
    with counted_host_reads() as calls:
        live = (inp.gates != 0).tolist()
        idx = torch.tensor([k for k, v in enumerate(live) if v])
        torch.repeat_interleave(inp.gates[idx], torch.tensor([4] * len(idx)))
    assert calls == ["tolist", "torch.tensor", "torch.tensor",
                     "repeat_interleave without output_size"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_packed_peer_matches_float64(case, seed, fast_path):
    inp = make_inputs(case, seed)
    outs, masks = harness._outputs(harness.Bound("packed", case, inp), inp.dy)
    assert len(masks) == (1 if case.dropout else 0)
    refs = harness._reference_outputs(inp, case.dropout, masks)
    for name, o, r in zip(("y", "dx", "dA", "dB", "dgates"), outs, refs):
        assert_rel(name, o, r, torch.float32)


def test_packed_peer_per_row_gates_and_bad_input(seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(5, 7, 6, generator=g), torch.randn(9, 6, generator=g)
    A, B = torch.randn(6, 6, generator=g), torch.randn(9, 6, generator=g)
    gates = torch.rand(5, 7, 3, generator=g)
    y = peers.PackedLoRA(w, None, A, B, gates, [0, 1, 3, 6], [1.0, 2.0, 0.5])(x)
    ref = gated_lora_linear_ref(x.double(), w.double(), None, A.double(), B.double(),
                                gates.double(), [0, 1, 3, 6], [1.0, 2.0, 0.5])
    assert_rel("y", y, ref, torch.float32)
    with pytest.raises(ValueError, match="rank_offsets"):
        peers.PackedLoRA(w, None, A, B, gates, [0, 1, 3], None)
    with pytest.raises(ValueError, match="dropout"):
        peers.PackedLoRA(w, None, A, B, gates, dropout=1.0)


@pytest.mark.parametrize("peer", ["ours", "peft"])
def test_dropout_peers_match_float64_on_the_masks_they_drew(peer, seed, fast_path):
    # PEFT draws one mask per adapter, ours one for the bank: the oracle takes either
    pytest.importorskip("peft") if peer == "peft" else None
    case = CASES[3]
    inp = make_inputs(case, seed)
    outs, masks = harness._outputs(harness.Bound(peer, case, inp), inp.dy)
    assert len(masks) == (case.k if peer == "peft" else 1)
    refs = harness._reference_outputs(inp, case.dropout, masks)
    for name, o, r in zip(("y", "dx", "dA", "dB"), outs, refs):
        assert_rel(name, o, r, torch.float32)
    # and a wrong mask is caught: the check is not vacuous
    wrong = [~m for m in masks]
    bad = harness._reference_outputs(inp, case.dropout, wrong)
    assert harness.worst_rel_err(outs, bad[:len(outs)]) > 0.1


def test_tuning_record_reads_the_op_and_the_kernels(monkeypatch):
    # what the GPU benchmark records beside the times: the op's candidate timings per bucket
    # (every autotune.CANDIDATES entry) and the Triton configs chosen (kernels.chosen_configs)
    import tuning_record
    from litelora_fast.op import autotune
    from litelora_fast import kernels

    case = Case(4096, 4096, 8192, 1, 16, dropout=0.1)
    needs = (True, False, False, True, True, False)
    name = tuning_record.bucket_name(case, needs)
    assert name.startswith("N8192-Din4096-Dout4096-R16-bfloat16-") and name.endswith("-dropout")
    monkeypatch.setattr(autotune, "timings", lambda: {
        name: {"times": {"triton": 2e-3, "torch": 1e-3, "hybrid": float("inf")},
               "winner": "torch", "device": "cuda:0"}})
    got = tuning_record.candidates(case, needs)
    assert got == {"bucket": name, "times": {"triton": 2e-3, "torch": 1e-3, "hybrid": None},
                   "winner": "torch", "device": "cuda:0"}
    assert set(got["times"]) == set(autotune.CANDIDATES)
    other = tuning_record.candidates(Case(4096, 14336, 8192, 1, 16), needs)
    assert tuning_record.NOT_TIMED in other and other["bucket"] != name
    monkeypatch.setattr(kernels, "chosen_configs", lambda: {"shrink": [{"BLOCK_M": 64}]})
    assert tuning_record.triton_configs() == {"shrink": [{"BLOCK_M": 64}]}


def test_sweep_lists_every_sweep_config_of_the_fused_gemms():
    # the sweep launches SWEEP_CONFIGS entries with config=; its plan takes them in value
    # order under gpu_plan's bound
    import gpu_plan
    import gpu_sweep
    import sweep_configs
    from litelora_fast.kernels import fused_dyw_dsa, fused_xw_sgb

    for kernel, module in (("fused_forward", fused_xw_sgb), ("fused_dx", fused_dyw_dsa)):
        configs, source = sweep_configs.sweep_list(kernel)
        assert source.endswith(".SWEEP_CONFIGS")
        want = [(v, c) for v, cs in module.SWEEP_CONFIGS.items() for c in cs]
        assert [(v, c) for _, c, v in configs] == want
        assert len({label for label, _, _ in configs}) == len(configs)   # labels tell them apart
        planned = gpu_sweep.plan()[kernel][0]
        assert len(planned) == min(len(configs), gpu_plan.SWEEP_MAX_CONFIGS)
        order = [gpu_plan.SWEEP_VARIANT_ORDER.index(v) for _, _, v in planned]
        assert order == sorted(order)


def test_every_sweep_config_launches_with_config_and_matches_float64(seed):
    # what gpu_sweep.py times on the GPU: each SWEEP_CONFIGS entry through the launcher's
    # config= (interpreted here; fp16: the interpreter's bf16 tl.dot is wrong, triton 11584),
    # on a shape no tile divides, with the variant it names actually running
    import sweep_configs
    from litelora_fast import kernels

    N, Di, Do, R = 40, 48, 56, 24
    h = torch.float16
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(h)

    x, w, SG, B = randn(N, Di), randn(Do, Di), randn(N, R), randn(Do, R)
    dy, dS, A = randn(N, Do), randn(N, R), randn(R, Di)
    ref = {"fused_forward": x.double() @ w.double().t() + SG.double() @ B.double().t(),
           "fused_dx": dy.double() @ w.double() + dS.double() @ A.double()}
    args = {"fused_forward": (x, w, None, SG, B), "fused_dx": (dy, w, dS, A)}
    for kernel in ("fused_forward", "fused_dx"):
        for label, config, variant in sweep_configs.sweep_list(kernel)[0]:
            before = kernels.LAUNCH_COUNTS[f"{kernel}/{variant}"]
            y = sweep_configs.launch(kernel, args[kernel], config, variant)
            assert kernels.LAUNCH_COUNTS[f"{kernel}/{variant}"] == before + 1, label
            assert_rel(f"{kernel} {label}", y, ref[kernel], h)


def test_a_peer_that_fails_its_check_is_recorded_not_timed(monkeypatch, seed, fast_path):
    # one broken peer must not cost the case (and ours' numbers) on a one-shot GPU run
    case = CASES[0]
    real = peers.bind

    def broken(peer, args, dropout=0.0):
        if peer == "packed":
            raise RuntimeError("boom")
        if peer == "reference":
            f = real(peer, args, dropout)
            return lambda: f() * 2.0   # a wrong answer
        return real(peer, args, dropout)
    monkeypatch.setattr(peers, "bind", broken)
    monkeypatch.setattr(harness, "_case_facts", {})
    facts = harness.check_once(case, seed)
    assert facts["failed_peers"] == ["reference", "packed"]
    assert facts["skipped_packed"] == "raised RuntimeError: boom"
    assert facts["skipped_reference"].startswith("relative error")
    assert "saved_bytes_ours" in facts and "saved_bytes_packed" not in facts
    monkeypatch.setattr(harness, "_case_facts", {})
    monkeypatch.setattr(peers, "bind", lambda peer, args, dropout=0.0: (
        (lambda: real(peer, args, dropout)() + 1.0) if peer == "ours" else real(peer, args,
                                                                                 dropout)))
    with pytest.raises(pytest.fail.Exception, match="ours on"):
        harness.check_once(case, seed)
