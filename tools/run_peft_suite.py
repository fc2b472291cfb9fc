"""PEFT's own LoRA tests, unpatched and under ``llf.patch_peft()``: one command, one verdict.

    python tools/run_peft_suite.py /path/to/peft-checkout [--python /path/to/venv/bin/python]

Runs ``tests/test_custom_models.py -k "LoraConfig and MLP"`` (the ids with ``-LoraConfig-``) of
the PEFT checkout twice with the given interpreter (one whose ``peft`` is that checkout's, with
litelora_fast installed): as it is, then with ``tools/llf_peft_plugin.py`` applying
``llf.patch_peft()``. Prints both pass/fail counts and run times and the op's call counts, and
exits 1 when a test that passes unpatched does not pass patched, or when the patched run never
called our op. ``--test``/``-k``/``--ids`` pick another selection; extra pytest arguments go
after ``--``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))


def outcomes(junit_path: str) -> dict:
    """``{test id: "passed" | "failed" | "skipped"}`` from a junit XML report."""
    out = {}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag for child in case}
        out[name] = ("failed" if tags & {"failure", "error"} else
                     "skipped" if "skipped" in tags else "passed")
    return out


def run_pass(args, patched: bool, workdir: str) -> tuple:
    junit = os.path.join(workdir, f"junit-{int(patched)}.xml")
    counts = os.path.join(workdir, "counts.json")
    env = dict(os.environ, LLF_PEFT_PATCH=str(int(patched)), LLF_IDS_CONTAIN=args.ids,
               LLF_COUNTS_FILE=counts,
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    cmd = [args.python, "-m", "pytest", args.test, "-k", args.k, "-p", "llf_peft_plugin",
           "-p", "no:cacheprovider", "-o", "addopts=", "-q", "--junitxml", junit, *args.extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=args.peft, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = "\n".join(proc.stdout.strip().splitlines()[-3:])
    op_calls = None
    if patched and os.path.exists(counts):
        with open(counts) as f:
            op_calls = json.load(f)
    return outcomes(junit), seconds, tail, proc.returncode, op_calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peft", help="a PEFT checkout (its tests/ folder is run)")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter whose peft is that checkout's (default: this one)")
    ap.add_argument("--test", default="tests/test_custom_models.py")
    ap.add_argument("-k", default="LoraConfig and MLP")
    ap.add_argument("--ids", default="-LoraConfig-", help="keep only ids containing this")
    ap.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        plain, t_plain, tail_plain, _, _ = run_pass(args, False, workdir)
        patched, t_patched, tail_patched, rc, op_calls = run_pass(args, True, workdir)
    for label, res, secs, tail in (("unpatched", plain, t_plain, tail_plain),
                                   ("patched", patched, t_patched, tail_patched)):
        c = {k: sum(v == k for v in res.values()) for k in ("passed", "failed", "skipped")}
        print(f"{label:>9}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
              f"in {secs:.1f} s  [{tail.splitlines()[-1] if tail else 'no output'}]")
    print(f"our op's calls in the patched run: {op_calls}")
    lost = sorted(t for t, o in plain.items() if o == "passed" and patched.get(t) != "passed")
    for t in lost:
        print(f"REGRESSION (passes unpatched, {patched.get(t, 'missing')} patched): {t}")
    ran_op = bool(op_calls) and op_calls.get("fused", 0) + op_calls.get("lora_only", 0) > 0
    if not ran_op:
        print("FAIL: the patched run never called litelora_fast's op")
    if not plain:
        print("FAIL: the unpatched run collected no test")
    ok = not lost and ran_op and bool(plain)
    print("OK: every test that passes unpatched passes patched" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
