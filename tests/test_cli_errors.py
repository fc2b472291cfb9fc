"""Every documented command, given bad input, prints one line naming the problem on stderr and
exits with status 2: never a traceback, never argparse's usage block (issue 18, item 5)."""
import pytest

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


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_status_2(command, tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.json").write_text("{truncated")
    paths = {"bad": str(tmp_path / "bad.pt"), "bad_json": str(tmp_path / "bad.json"),
             "missing": str(tmp_path / "no-such-model")}
    args, word = BAD_INPUTS[command]
    try:
        code = main([command, *(a.format(**paths) for a in args)])
    except SystemExit as e:           # argparse exits through the router's one-line error
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"python -m litelora_fast {command}: error:"), err
    assert word in err, err
