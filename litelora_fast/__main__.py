"""Command line: ``python -m litelora_fast <command> [options]``.

Each command lives in its own module (the tools in ``litelora_fast.tools``) as a function
``main(argv)`` (or the function named after a colon); this file only routes. While a command
runs, ``sys.argv[0]`` is ``python -m litelora_fast <command>``, so every command's ``--help`` and
usage errors name it properly; a ``FileNotFoundError`` or ``ValueError`` from a command (a
missing input file, an input that holds nothing to work on) becomes a one-line error on stderr
and exit code 2; so does a usage error of a command's own parser (argparse would print the whole
usage block first: here only the line naming the problem, ``--help`` shows the rest), and a
missing optional dependency (the line names the package to install).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> ("module[:function]" implementing `fn(argv) -> exit code`, one-line help)
COMMANDS = {
    "demo": ("litelora_fast.litelora.demo:demo_main",
             "LiteLoRA (paper's and ours) vs SD-LoRA, shared adapter, head only on real MNIST streams"),
    "analyze": ("litelora_fast.litelora.demo:analyze_main",
                "adapter redundancy of a saved checkpoint: subspace similarity matrix + heat map"),
    "validate": ("litelora_fast.tools.validate", "fused-or-fast path vs the reference on random shapes"),
    "roofline": ("litelora_fast.tools.roofline",
                 "FLOPs, bytes and predicted times (H200 or H100 ceilings) of each benchmark case"),
    "report": ("litelora_fast.tools.report", "pytest-benchmark JSON -> markdown table and speedup plot"),
    "tune": ("litelora_fast.tools.tune", "pre-tune the kernels-vs-cuBLAS choice for a model's shapes (CUDA)"),
    "inspect": ("litelora_fast.kernels.compile_report",
                "ahead-of-time sm_90 compile report of every kernel config (no GPU needed)"),
}


def _one_line_error(parser: argparse.ArgumentParser, message: str):
    """``ArgumentParser.error`` without the usage block: ``prog: error: message``, exit 2."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


# module name -> the distribution pip installs it from, where the two differ
PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}


def _missing_dependency(error: ImportError):
    """The name of the third-party module whose absence caused ``error`` (``None``: an import
    error of our own code, a bug that keeps its traceback). Follows ``raise ... from err``."""
    seen = error
    while seen is not None:
        name = getattr(seen, "name", None)
        if isinstance(seen, ModuleNotFoundError) and name:
            top = name.split(".")[0]
            return None if top == "litelora_fast" else top
        seen = seen.__cause__
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m litelora_fast",
        description="litelora-fast: fused gated multi-LoRA linear layers and the LiteLoRA gate.",
        epilog="commands:\n" + "\n".join(f"  {name:<10} {help_}"
                                          for name, (_, help_) in COMMANDS.items())
        + "\n\n`python -m litelora_fast <command> --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module_name, _, function = COMMANDS[ns.command][0].partition(":")
    command = getattr(importlib.import_module(module_name), function or "main")
    prog = f"python -m litelora_fast {ns.command}"
    saved_argv0 = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = prog   # argparse's default prog is basename(sys.argv[0])
    real_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _one_line_error   # restored below: only while it runs
    try:
        return int(command(argv[1:]) or 0)
    except (FileNotFoundError, ValueError) as e:
        # A usage problem (missing file, empty input), not a bug: one line, no traceback.
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        missing = _missing_dependency(e)
        if missing is None:
            raise
        # Our own messages say what to install; Python's bare one ("No module named 'x'") not.
        hint = "" if "pip install" in str(e) else (
            f": pip install {PIP_NAMES.get(missing, missing)} (`pip install litelora-fast[dev]` "
            "installs every optional dependency of the commands)")
        print(f"{prog}: error: {e}{hint}", file=sys.stderr)
        return 2
    finally:
        argparse.ArgumentParser.error = real_error
        if saved_argv0 is not None:
            sys.argv[0] = saved_argv0


if __name__ == "__main__":
    sys.exit(main())
