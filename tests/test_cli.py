"""The command line: help lists the commands; `validate` checks the op against the reference."""
import subprocess
import sys

from litelora_fast.__main__ import COMMANDS, main


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "litelora_fast", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_validate_passes_on_the_fast_path(fast_path, capsys, seed):
    assert main(["validate", "--seed", str(seed)]) == 0
    out = capsys.readouterr().out
    assert "all within bounds" in out and "float32" in out
    assert out.count(" yes") == 5
