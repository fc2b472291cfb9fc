"""The command line: help lists the commands with their proper prog, usage errors are one line,
`validate` checks the op against the reference in an untruncated table."""
import subprocess
import sys

import pytest

from litelora_fast.__main__ import COMMANDS, main
from litelora_fast.tools import validate
from numerics import assert_rel


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "litelora_fast", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"  {name} " in out.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_names_its_prog(command, capsys):
    # In-process (the router sets argv[0] around the command), so this costs no interpreter start.
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m litelora_fast {command}"), out[:200]
    assert "__main__.py" not in out


def test_help_prog_through_the_interpreter():
    out = _run("roofline", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m litelora_fast roofline")


@pytest.mark.parametrize("args", [["report", "missing.json"], ["roofline", "--measured", "m.json"],
                                  ["analyze", "missing.pt"]], ids=lambda a: a[0])
def test_a_missing_input_is_one_line_and_exit_code_2(args, tmp_path):
    out = _run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert args[0] in lines[0] and "error" in lines[0] or "no such" in lines[0], lines[0]
    assert args[-1] in lines[0]
    assert list(tmp_path.iterdir()) == []   # nothing written on failure


def test_a_value_error_from_a_command_is_one_line(monkeypatch, capsys):
    def broken(argv):
        raise ValueError("the input holds nothing to work on")
    monkeypatch.setitem(COMMANDS, "broken", ("litelora_fast.tools.validate:main", "test"))
    monkeypatch.setattr(validate, "main", broken)
    assert main(["broken"]) == 2
    err = capsys.readouterr().err
    assert err == "python -m litelora_fast broken: error: the input holds nothing to work on\n"


def test_validate_passes_on_the_fast_path(fast_path, capsys, seed):
    assert main(["validate", "--seed", str(seed)]) == 0
    out = capsys.readouterr().out
    assert "all within bounds" in out and "float32" in out
    assert out.count(" yes") == len(validate.SHAPES)
    # untruncated: every shape label appears whole, the longest included
    labels = [validate.shape_label(*s[:5]) for s in validate.SHAPES]
    assert max(len(label) for label in labels) > 50
    for label in labels:
        assert label in out


class _ScaleGateGrad(__import__("torch").autograd.Function):
    """Identity forward; backward multiplies the gate gradient by 1.01 (a 1% error)."""

    @staticmethod
    def forward(ctx, g):
        return g.view_as(g)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.01


def test_validate_catches_a_one_percent_gate_gradient_error(fast_path, monkeypatch, capsys, seed):
    real = validate.gated_lora_linear

    def wrong(x, w, b, A, B, gates, *rest, **kw):
        return real(x, w, b, A, B, _ScaleGateGrad.apply(gates), *rest, **kw)
    monkeypatch.setattr(validate, "gated_lora_linear", wrong)
    assert main(["validate", "--seed", str(seed)]) == 1
    out = capsys.readouterr().out
    assert "SOME ERRORS EXCEED THEIR BOUND" in out and out.count(" NO") >= 1


def test_gate_scale_bounds_the_gate_gradient(seed):
    import torch
    t, offsets, scaling = validate._draw((9,), 12, 7, [3, 2], False, (), torch.float64, "cpu")
    dy = torch.randn(9, 7, dtype=torch.float64)
    _, g_ref = validate._run(validate.gated_lora_linear_ref, t, offsets, scaling, dy)
    scale = validate._gate_scale(t, offsets, scaling, dy, False)
    assert (g_ref["gates"].abs() <= scale * (1 + 1e-12)).all()
    S, dSg = t["x"] @ t["lora_A"].t(), dy @ t["lora_B"]
    by_hand = torch.stack([(S * dSg)[:, :3].abs().sum() * scaling[0],
                           (S * dSg)[:, 3:].abs().sum() * scaling[1]])
    assert_rel("gate scale", scale, by_hand, torch.float64)
