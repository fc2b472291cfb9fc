"""Ahead-of-time compile of every shipped kernel config, with static checks read from the SASS.

    rows = compile_report(arch="sm_90")     # needs no GPU: triton.compile + ptxas + cuobjdump
    print(format_report(rows))

One row per (kernel, config): ``kernel``, ``config`` (str), ``registers`` (per thread),
``spill_bytes`` (stack + local memory per thread: 0 means no register spills), ``shared_bytes``
(dynamic shared memory Triton launches with + static shared memory in the cubin), ``hgmma``
(True when the SASS holds HGMMA, i.e. the tile products run on Hopper's wgmma tensor cores).

Registry. Each kernel module (``litelora_fast.kernels.forward`` and ``...backward``) exposes
``AOT_SPECS``: a list of ``AotSpec`` (or dicts with the same keys), one per compiled variant:

    name        kernel name in the report, e.g. "fused_forward"
    fn          the @triton.jit kernel object
    signature   {arg name: triton type}: "*bf16" / "*fp16" / "*fp32" / "*i32" pointers, "i32" /
                "i64" / "fp32" scalars, "constexpr" for every compile-time constant
    constexprs  {arg name: value} for every "constexpr" entry: block sizes, flags, and unit
                strides (the JIT makes an int argument equal to 1 a constant, so a contiguous
                tensor's inner stride is passed as 1 here, as a real launch would see it)
    num_warps, num_stages
    aligned     arg names assumed divisible by 16 (16-byte aligned pointers, strides/sizes that
                are multiples of 16), as the JIT specialises them at the benchmark shapes;
                default: every pointer argument
    config      the label printed in the report (default: built from the values above)

``make_spec(name, fn, pointers, constexprs, num_warps, num_stages, ...)`` builds one from a
``{pointer arg: "*bf16"}`` map, typing every other argument "i32".

Under ``TRITON_INTERPRET=1`` (the test session) the kernels are interpreted functions and the
interpreter patches ``triton.language`` while it runs, which breaks Triton's code generator in the
same process; ``compile_report`` then runs itself in a fresh Python process with the interpreter
off (``python -m litelora_fast.kernels.inspect --json``) and returns that process's rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

SPEC_MODULES = ("litelora_fast.kernels.forward", "litelora_fast.kernels.backward")
H200_SHARED_LIMIT = 227 * 1024  # max dynamic + static shared memory per block on sm_90


@dataclasses.dataclass
class AotSpec:
    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    aligned: tuple | None = None
    config: str | None = None

    def label(self) -> str:
        if self.config:
            return self.config
        ptr_types = sorted({t[1:] for t in self.signature.values() if t.startswith("*")})
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs.items() if k.isupper())
        return f"{consts},w{self.num_warps},s{self.num_stages},{'/'.join(ptr_types)}"


def make_spec(name, fn, pointers, constexprs, num_warps, num_stages, int_type="i32",
              aligned=None, config=None) -> AotSpec:
    """An ``AotSpec`` whose signature types ``pointers`` as given, ``constexprs`` as constexpr and
    every other argument of ``fn`` as ``int_type``."""
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = pointers[arg]
        else:
            signature[arg] = int_type
    return AotSpec(name, fn, signature, dict(constexprs), num_warps, num_stages,
                   None if aligned is None else tuple(aligned), config)


def _as_spec(entry) -> AotSpec:
    # Duck-typed: under ``python -m`` this module is also __main__, with its own AotSpec class.
    return AotSpec(**entry) if isinstance(entry, dict) else entry


def collect_specs() -> list[AotSpec]:
    """``AOT_SPECS`` of every kernel module that exists (backward may not be written yet)."""
    specs = []
    for module_name in SPEC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue
            raise
        specs.extend(_as_spec(s) for s in getattr(module, "AOT_SPECS", []))
    return specs


def _parse_arch(arch: str) -> int:
    m = re.fullmatch(r"sm_?(\d+)a?", str(arch))
    if not m:
        raise ValueError(f"arch: expected a CUDA arch like 'sm_90', got {arch!r}")
    return int(m.group(1))


def _tool(name: str) -> str:
    import triton

    return getattr(triton.knobs.nvidia, name).path


def _resource_usage(cubin_path: str) -> dict:
    out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin_path],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump: no resource usage line in:\n{out}")
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack": stack, "static_shared": shared, "local": local}


def _has_hgmma(cubin_path: str) -> bool:
    sass = subprocess.run([_tool("cuobjdump"), "--dump-sass", cubin_path],
                          check=True, capture_output=True, text=True).stdout
    return "HGMMA" in sass


def compile_spec(spec: AotSpec, arch: str = "sm_90") -> dict:
    """Compile one spec for ``arch`` and read its resource usage and SASS: one report row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec.fn
    aligned = spec.aligned
    if aligned is None:
        aligned = [a for a, t in spec.signature.items() if t.startswith("*")]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn=fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", _parse_arch(arch), 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{spec.name}.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = _resource_usage(path)
        hgmma = _has_hgmma(path)
    return {
        "kernel": spec.name,
        "config": spec.label(),
        "registers": usage["registers"],
        "spill_bytes": usage["stack"] + usage["local"],
        "shared_bytes": compiled.metadata.shared + usage["static_shared"],
        "hgmma": hgmma,
    }


def _interpreted() -> bool:
    import triton

    return bool(triton.knobs.runtime.interpret)


def compile_report(arch: str = "sm_90") -> list[dict]:
    """One row per shipped (kernel, config), compiled ahead of time for ``arch`` (no GPU needed)."""
    _parse_arch(arch)
    if _interpreted():
        return _report_in_subprocess(arch)
    return [compile_spec(spec, arch) for spec in collect_specs()]


def _report_in_subprocess(arch: str) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "litelora_fast.kernels.inspect", "--arch", arch,
                           "--json"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compile_report subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def format_report(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    cols = ["kernel", "config", "registers", "spill_bytes", "shared_bytes", "hgmma"]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = compile_report(args.arch)
    print(json.dumps(rows) if args.json else format_report(rows))


if __name__ == "__main__":
    main()
