"""Which implementation runs a call, decided in one function (``implementation``); on CUDA the
op picks, per shape bucket, the fastest of its three implementations, measured once per machine.

The candidates (``CANDIDATES``) are the backends of ``backends.py`` running the same math
(``op_math.py``):

- ``"triton"``: the fused kernels (base GEMM and adapter columns on one accumulator);
- ``"hybrid"``: cuBLAS for the base GEMMs, the kernels for the LoRA work (in-kernel dropout);
- ``"torch"``: the cuBLAS composite that the best plain-PyTorch peer runs (packed shrink GEMM +
  ``addmm`` into the base output, and the packed GEMMs of its backward).

A *shape bucket* is ``(N rounded up to a power of two, D_in, D_out, R_act, dtype, gate kind,
gradient needs, LoRA dropout on or off)``. The first call of a bucket on a CUDA device times every
candidates on that call's own tensors (forward, plus backward when a gradient is needed; a few
warm-up runs, then the median of timed runs with CUDA events: the only host syncs, once per
bucket), and keeps the winner in memory and on disk, in
``~/.cache/litelora_fast/autotune-<machine>.json`` (directory overridden by
``LITELORA_CACHE_DIR``). The machine key is the GPU name and the torch and triton
versions, so a new driver stack or GPU tunes afresh and each shape is tuned once per machine, not
once per process. Every later call is a dictionary lookup: no host sync. Processes that tune at
once (DDP ranks) merge their entries into the file under an exclusive lock (``<file>.lock``), so
none is lost and re-timed later. ``timings()`` returns every candidate's time per bucket (timed
here or read from the cache): the tuning data of a GPU run.

The tuner also checks what it picks: before timing a bucket it runs every candidate once on the
tuning inputs and compares its outputs (``y`` and the gradients of the timed step) with the
cuBLAS composite's (``"torch"``, the reference). A candidate whose relative error
``||out - ref|| / ||ref||`` exceeds the dtype's bound (``agreement_bound``) loses, untimed, with a
warning naming the bucket; its error is kept in the cache entry (``"rel_err"``, ``"wrong"``) and
in ``timings()``. A fast, wrong kernel on a new GPU thus costs speed, never the results.

Never timed: CPU tensors (the PyTorch fast path, or the kernels under ``TRITON_INTERPRET=1``),
a forced ``backend=``, float64/meta/empty problems (fixed rules of ``implementation``),
``LITELORA_AUTOTUNE=0`` (always the kernels: a fixed, untimed choice), and calls made while a
CUDA graph is being captured (the kernels, untimed, when the bucket is not tuned yet).

``chosen_implementation(...)`` tells which implementation a shape uses; ``python -m litelora_fast
tune`` (``tools/tune.py``) pre-tunes a model's shapes.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import statistics
import tempfile
import warnings
from typing import Callable, Optional

import torch

try:                                   # the cache file's lock (POSIX)
    import fcntl
except ImportError:                    # pragma: no cover (Windows)
    fcntl = None

from . import backends, op_math
from .. import settings

# Ties go to the earlier one: the kernels, then the hybrid, then the composite.
CANDIDATES = ("triton", "hybrid", "torch")
REFERENCE = "torch"                    # the cuBLAS composite every other candidate must agree with
NEED_NAMES = ("x", "weight", "bias", "lora_A", "lora_B", "gates")
FORMAT = 1


def enabled() -> bool:
    """False when ``LITELORA_AUTOTUNE`` is off: the fixed, untimed choice (the kernels)."""
    return settings.autotune()


def cache_dir() -> str:
    """``$LITELORA_CACHE_DIR``, else ``~/.cache/litelora_fast``."""
    return settings.cache_dir()


def bucket(n: int, d_in: int, d_out: int, r_act: int, dtype: torch.dtype, per_row: bool,
           needs, dropout: bool = False) -> tuple:
    """The in-memory key of a shape bucket (see the module docstring); ``dropout``: whether the
    call applies LoRA dropout (the candidates then do different extra work)."""
    from ..kernels.tuning import n_bucket      # (the kernels' autotune key: one rounding rule)

    return (n_bucket(n), d_in, d_out, r_act, _dtype_name(dtype),
            "per_row" if per_row else "per_adapter", tuple(bool(v) for v in needs),
            bool(dropout))


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def bucket_name(key: tuple) -> str:
    """The on-disk spelling of a bucket, e.g. ``N8192-Din4096-Dout4096-R16-bfloat16-per_adapter-
    grad:x,lora_A,lora_B`` (``grad:none`` for inference; ``-dropout`` appended with LoRA
    dropout)."""
    n, d_in, d_out, r, dtype, kind, needs, dropout = key
    grads = ",".join(name for name, need in zip(NEED_NAMES, needs) if need) or "none"
    return (f"N{n}-Din{d_in}-Dout{d_out}-R{r}-{dtype}-{kind}-grad:{grads}"
            + ("-dropout" if dropout else ""))


# How far a candidate's outputs may be from the reference's, relative (``||out - ref|| /
# ||ref||``): the suite's float64 bounds for the dtype (tests/numerics.py: fp16 2e-3, bf16 2e-2,
# TF32 1e-2, exact fp32 over GPU-long reductions 1e-5). Both sides carry rounding of that size, so
# a correct candidate sits well inside; a wrong index or a lost term misses by its share, 1e-2+.
AGREEMENT_BOUND = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 1e-5, "float32-tf32": 1e-2,
                   "float64": 1e-12}


def agreement_bound(dtype_name: str, device: torch.device) -> float:
    """``AGREEMENT_BOUND`` for a bucket's dtype; fp32 on CUDA with torch's TF32 switch on takes
    the TF32 bound (both the composite and the kernels then multiply in TF32)."""
    if dtype_name == "float32" and device.type == "cuda":
        from ..kernels.tuning import torch_allows_tf32
        if torch_allows_tf32():
            return AGREEMENT_BOUND["float32-tf32"]
    return AGREEMENT_BOUND[dtype_name]


def rel_err(out, ref) -> float:
    """The largest ``||o - r|| / ||r||`` over the outputs present in both lists (float64 norms;
    inf where ``o`` is not finite where ``r`` is, or where only one of them is given)."""
    worst = 0.0
    for o, r in zip(out, ref):
        if o is None and r is None:
            continue
        if o is None or r is None or o.shape != r.shape:
            return float("inf")
        o, r = o.detach().double(), r.detach().double()
        if not bool(torch.isfinite(o).eq(torch.isfinite(r)).all()):
            return float("inf")
        finite = torch.isfinite(r)
        denom = r[finite].norm().item()
        err = (o[finite] - r[finite]).norm().item() / (denom if denom > 0 else 1.0)
        worst = max(worst, err if err == err else float("inf"))      # NaN -> inf
    return worst


def cuda_timer(fn: Callable[[], None], warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (syncs: tuning only)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def machine_of(device: torch.device) -> dict:
    """The machine part of the cache key: GPU name, torch and triton versions."""
    import triton
    return {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "triton": triton.__version__}


class Tuner:
    """Times the candidates of a bucket once and remembers the winner, in memory and on disk.

    ``timer(fn) -> ms`` and ``machine(device) -> dict`` are injectable, so tests run on the CPU
    with a fake clock and a fake GPU name; the defaults use CUDA events and the real device.
    """

    def __init__(self, directory: Optional[str] = None,
                 timer: Callable[[Callable[[], None]], float] = cuda_timer,
                 machine: Callable[[torch.device], dict] = machine_of):
        self._directory = directory
        self.timer = timer
        self.machine = machine
        self._choices: dict = {}          # (device, bucket) -> candidate name
        self._machines: dict = {}         # device -> (machine dict, file path)
        self._loaded: set = set()         # devices whose disk file was read
        self._disk: dict = {}             # device -> {bucket name: entry} from the file
        self._warned: set = set()         # unreadable files already reported
        self.times: dict = {}             # (device, bucket) -> {candidate: ms}
        self.checks: dict = {}            # (device, bucket) -> ({candidate: rel err}, [wrong])

    @property
    def directory(self) -> str:
        return self._directory or cache_dir()

    def _machine(self, device: torch.device):
        hit = self._machines.get(device)
        if hit is None:
            m = self.machine(device)
            digest = hashlib.sha1(json.dumps(m, sort_keys=True).encode()).hexdigest()[:16]
            hit = (m, os.path.join(self.directory, f"autotune-{digest}.json"))
            self._machines[device] = hit
        return hit

    def path(self, device: torch.device) -> str:
        """The cache file of ``device``'s machine."""
        return self._machine(device)[1]

    def _read(self, device: torch.device) -> dict:
        """The entries of ``device``'s cache file; ``{}`` when it is missing or unreadable (a
        corrupted file is reported once and then overwritten by the next tuning)."""
        machine, path = self._machine(device)
        try:
            with open(path) as f:
                data = json.load(f)
            entries = data["entries"]
            if not isinstance(entries, dict):
                raise ValueError("entries is not a mapping")
            if data.get("format") != FORMAT or data.get("machine") != machine:
                return {}                  # another format or machine: tuned afresh
            return {k: v for k, v in entries.items()
                    if isinstance(v, dict) and v.get("winner") in CANDIDATES}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"litelora_fast autotune cache {path} is unreadable ({e}); "
                              f"shapes will be tuned again and the file rewritten",
                              RuntimeWarning, stacklevel=2)
            return {}

    def lookup(self, device: torch.device, key: tuple) -> Optional[str]:
        """The remembered winner of a bucket (memory, then the disk file, read once per device),
        or ``None``."""
        hit = self._choices.get((device, key))
        if hit is not None:
            return hit
        if device not in self._loaded:
            self._loaded.add(device)
            self._disk[device] = self._read(device)
        entry = self._disk.get(device, {}).get(bucket_name(key))
        if entry is None:
            return None
        self._choices[(device, key)] = entry["winner"]
        self.times[(device, key)] = entry.get("ms", {})
        self.checks[(device, key)] = (entry.get("rel_err", {}), entry.get("wrong", []))
        return entry["winner"]

    def choose(self, device: torch.device, key: tuple, candidates: dict) -> str:
        """The winner of a bucket: remembered, else checked and timed now (``candidates``: name
        -> fn; a fn that returns its outputs is compared with the reference's, see ``check``)."""
        winner = self.lookup(device, key)
        if winner is not None:
            return winner
        errs, wrong = self.check(device, key, candidates)
        times, errors = {}, {}
        for name, fn in candidates.items():
            if name in wrong:
                times[name] = float("inf")     # loses untimed
                continue
            try:
                times[name] = float(self.timer(fn))
            except Exception as e:         # a candidate that cannot run this shape loses
                times[name], errors[name] = float("inf"), e
        if len(errors) == len(candidates):
            raise next(iter(errors.values()))
        for name, e in errors.items():
            warnings.warn(f"litelora_fast autotune: candidate {name!r} failed on "
                          f"{bucket_name(key)} ({type(e).__name__}: {e}); not chosen",
                          RuntimeWarning, stacklevel=2)
        # Ties go to the earlier candidate in CANDIDATES (the kernels).
        winner = min(times, key=lambda name: (times[name], CANDIDATES.index(name)))
        self._choices[(device, key)] = winner
        self.times[(device, key)] = times
        self.checks[(device, key)] = (errs, wrong)
        self._write(device, key, winner, times, errs, wrong)
        return winner

    def check(self, device: torch.device, key: tuple, candidates: dict) -> tuple:
        """``({candidate: rel err}, [wrong candidates])``: each candidate run once on the tuning
        inputs, its outputs compared with ``REFERENCE``'s (``rel_err``); wrong = beyond
        ``agreement_bound`` of the bucket's dtype, each reported by a warning naming the bucket.
        Nothing is compared when the reference is not a candidate, fails, or returns no outputs
        (a candidate that fails here is left to the timing, which reports it)."""
        ref_fn = candidates.get(REFERENCE)
        try:
            ref = ref_fn() if ref_fn is not None else None
        except Exception:
            ref = None
        if not ref:
            return {}, []
        bound = agreement_bound(key[4], device)
        errs, wrong = {}, []
        for name, fn in candidates.items():
            if name == REFERENCE:
                continue
            try:
                out = fn()
            except Exception:
                continue
            if out is None:
                continue
            errs[name] = rel_err(out, ref)
            if errs[name] > bound:
                wrong.append(name)
                warnings.warn(f"litelora_fast autotune: candidate {name!r} on {bucket_name(key)} "
                              f"differs from the {REFERENCE!r} composite by a relative error of "
                              f"{errs[name]:.3g} (bound {bound:g} for {key[4]}); not chosen",
                              RuntimeWarning, stacklevel=3)
        return errs, wrong

    def _write(self, device, key, winner: str, times: dict, errs: dict, wrong: list) -> None:
        """Merge one entry into the cache file. Other processes (DDP ranks) tune too: the
        re-read, merge and replace run under an exclusive lock on ``<file>.lock``, so no
        process's entry is lost; readers need no lock (the replace is atomic)."""
        machine, path = self._machine(device)
        entry = {"winner": winner, "ms": {
            k: (round(v, 6) if v != float("inf") else None) for k, v in times.items()}}
        if errs:                          # the outputs were compared (see ``check``)
            entry["rel_err"] = {k: (float(f"{v:.4g}") if v != float("inf") else None)
                                for k, v in errs.items()}
            entry["wrong"] = list(wrong)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with _locked(path + ".lock"):
                entries = self._read(device) if os.path.exists(path) else {}
                entries[bucket_name(key)] = entry
                data = {"format": FORMAT, "machine": machine, "entries": entries}
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, path)         # atomic: a reader never sees half a file
            self._disk.setdefault(device, {}).update(entries)
        except OSError as e:
            warnings.warn(f"litelora_fast autotune could not write {path} ({e}); the choice "
                          f"is kept for this process only", RuntimeWarning)

    def timings(self) -> dict:
        """``{bucket name: {"times": {candidate: seconds}, "winner": name, "device": str,
        "rel_err": {candidate: error vs the reference}, "wrong": [candidates]}}`` (the last two
        when the outputs were compared) over every bucket this process knows: timed here, or read from the cache file (a candidate that
        could not run, or was wrong, has time ``None``)."""
        out = {}
        for device, entries in self._disk.items():
            for name, entry in entries.items():
                out[name] = _timing(entry.get("ms", {}), entry["winner"], device,
                                    (entry.get("rel_err", {}), entry.get("wrong", [])))
        for (device, key), winner in self._choices.items():
            out[bucket_name(key)] = _timing(self.times.get((device, key), {}), winner, device,
                                            self.checks.get((device, key), ({}, [])))
        return out

    def table(self) -> dict:
        """``{(device, bucket name): winner}`` of the buckets this process has decided."""
        return {(str(d), bucket_name(k)): v for (d, k), v in self._choices.items()}

    def forget(self) -> None:
        """Drop the in-memory choices (the disk file is read again at the next lookup)."""
        self._choices.clear()
        self._loaded.clear()
        self._disk.clear()
        self._machines.clear()
        self.times.clear()
        self.checks.clear()


TUNER = Tuner()


def timings() -> dict:
    """Every candidate's time per bucket known to the op's tuner (``Tuner.timings``): the
    buckets timed in this process and those read from the cache, in seconds."""
    return TUNER.timings()


def _timing(ms: dict, winner: str, device, checks=({}, [])) -> dict:
    seconds = {k: (None if v is None or v == float("inf") else v / 1e3) for k, v in ms.items()}
    errs, wrong = checks
    out = {"times": seconds, "winner": winner, "device": str(device)}
    if errs:                              # the outputs were compared (see ``Tuner.check``)
        out["rel_err"] = {k: (float("inf") if v is None else v) for k, v in errs.items()}
        out["wrong"] = list(wrong)
    return out


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on the file ``path`` (created if needed) for the ``with`` block."""
    with open(path, "a") as f:
        if fcntl is None:                 # no flock (Windows, where triton does not run): as before
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _workload(be, x2d, weight, plan, gates2d, needs, drop=None) -> Callable[[], None]:
    """One forward (+ backward when a gradient is needed) of the call's packed bank on ``be``;
    returns ``[y, dx, dW, db, dA, dB]`` (``None`` for a gradient not needed) for ``Tuner.check``.
    The gate gradient is computed but not returned: it is a sum over rows that can cancel, so its
    error relative to its own norm is no measure of correctness (the tests scale it by its terms)."""
    A, B = plan.lora_A, plan.lora_B

    def run():
        with torch.no_grad():
            y, S = op_math.forward(x2d, weight, None, A, B, gates2d, plan, be, drop)
            grads = [None] * 5
            if any(needs):
                grads = op_math.backward(y, x2d, weight, A, B, gates2d, S, plan,
                                         [True] * gates2d.shape[1], be, list(needs), drop)[:5]
            return [y, *grads]
    run.candidate = be.name               # (lets a test's fake timer tell the candidates apart)
    return run


_warned_bf16 = False


def implementation(device: torch.device, dtype: torch.dtype, override: Optional[str] = None,
                   empty: bool = False, key: Optional[tuple] = None,
                   time: Optional[Callable[[], str]] = None) -> Optional[str]:
    """The one rule that decides which backend (a name of ``backends.BACKENDS``) runs a call.

    - ``override`` (``backend=``) forces one; a forced kernel backend that cannot run here raises
      ``ValueError`` saying why (instead of a crash inside Triton), and an ``empty`` problem
      (a zero-size N, D_in or D_out: nothing to launch) takes ``"torch"``.
    - float64 (tensor cores have no fp64 mode worth a kernel; gradcheck's and the oracle's
      dtype), meta tensors and ``empty`` problems: ``"torch"``.
    - CUDA: the tuned winner of the call's bucket ``key``; a bucket not tuned yet is timed now
      by ``time()`` (the kernels, untimed, while a CUDA graph is being captured), or ``None``
      without ``time``. ``"triton"`` untimed without a ``key`` (no active adapter) or with
      ``LITELORA_AUTOTUNE=0``.
    - CPU: ``"torch"`` (the fast path), unless ``TRITON_INTERPRET=1`` asks for the kernels;
      bfloat16 then warns once and takes ``"torch"`` (the interpreter's bf16 ``tl.dot`` is
      wrong, triton issue 11584), except under the test suite's patch that fixes it
      (``backends.INTERPRETER_BF16_EXACT``).
    """
    if override is not None:
        if override not in backends.BACKENDS:
            raise ValueError(f"backend must be None or one of {tuple(backends.BACKENDS)}, "
                             f"got {override!r}")
        if override in backends.KERNEL_BACKENDS:
            why = backends.kernels_unusable(device, dtype)
            if why is not None:
                raise ValueError(f"backend={override!r}: {why}")
        return "torch" if empty else override
    if dtype == torch.float64 or empty or device.type == "meta":
        return "torch"
    if device.type == "cuda":
        if key is None or not enabled():
            return "triton"
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        winner = TUNER.lookup(device, key)
        if winner is None and time is not None:
            winner = "triton" if torch.cuda.is_current_stream_capturing() else time()
        return winner
    if device.type == "cpu" and backends.interpreter_requested():
        if backends.interpreter_runs(dtype):
            return "triton"
        global _warned_bf16
        if not _warned_bf16:
            _warned_bf16 = True
            warnings.warn("TRITON_INTERPRET=1 with bfloat16 tensors: Triton's interpreter "
                          "computes bfloat16 tl.dot wrongly (triton issue 11584), so these "
                          "calls take the PyTorch path", RuntimeWarning, stacklevel=4)
    return "torch"


def select(x2d, weight, plan, gates2d, needs, override: Optional[str] = None, drop=None):
    """The backend class of one call: ``implementation``'s answer for its device, dtype and
    bucket (timed on this call's own tensors when the bucket is new on a CUDA device)."""
    d_out = (plan.lora_B.shape[0] if plan is not None
             else weight.shape[0] if weight is not None else 0)
    empty = x2d.shape[0] == 0 or x2d.shape[1] == 0 or d_out == 0
    key = time = None
    if x2d.is_cuda and plan is not None and override is None:
        key = bucket(x2d.shape[0], x2d.shape[1], d_out, plan.rank, x2d.dtype, _per_row(gates2d),
                     needs, drop is not None)

        def time() -> str:
            return TUNER.choose(x2d.device, key, {
                name: _workload(backends.BACKENDS[name], x2d, weight, plan, gates2d, needs, drop)
                for name in CANDIDATES})
    return backends.BACKENDS[implementation(x2d.device, x2d.dtype, override, empty, key, time)]


def tune_shape(n: int, d_in: int, d_out: int, ranks: list, dtype: torch.dtype,
               per_row_gates: bool = False, needs=(True, False, False, True, True, False),
               device="cuda", tuner: Optional[Tuner] = None) -> tuple:
    """Tune one shape ahead of time on random tensors: ``(bucket key, winner)``. Every adapter
    is active (``R_act = sum(ranks)``). ``tuner`` defaults to the op's own ``TUNER``."""
    from .plan import pack
    tuner = TUNER if tuner is None else tuner
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    K, R = len(ranks), sum(ranks)
    offsets = [0]
    for r in ranks:
        offsets.append(offsets[-1] + r)
    f = {"device": device, "dtype": dtype}
    x2d = torch.randn(n, d_in, **f)
    weight = torch.randn(d_out, d_in, **f) / max(d_in, 1) ** 0.5
    A = torch.randn(R, d_in, **f) / max(d_in, 1) ** 0.5
    B = torch.randn(d_out, R, **f)
    gates2d = torch.rand(n, K, **f) if per_row_gates else torch.rand(K, **f).expand(n, K)
    plan = pack(tuple(k for k in range(K) if ranks[k] > 0), A, B, offsets, [1.0] * K, dtype)
    key = bucket(n, d_in, d_out, plan.rank, dtype, per_row_gates, needs)
    winner = tuner.choose(device, key, {
        name: _workload(backends.BACKENDS[name], x2d, weight, plan, gates2d, needs)
        for name in CANDIDATES})
    return key, winner


def _per_row(gates2d: torch.Tensor) -> bool:
    # Per-adapter gates reach the op as (K,) expanded over rows: row stride 0.
    return gates2d.shape[0] > 1 and gates2d.stride(0) != 0


def chosen_implementation(n: int, d_in: int, d_out: int, r_act: int, dtype: torch.dtype,
                          per_row_gates: bool = False,
                          needs=(True, False, False, True, True, False),
                          device="cuda", dropout: bool = False) -> Optional[str]:
    """Which implementation a shape uses (``implementation``'s answer, never timing):
    ``"triton"`` (the fused kernels), ``"hybrid"`` (cuBLAS base GEMMs, kernels for the LoRA
    work) or ``"torch"`` (the cuBLAS composite, and the CPU fast path); ``None`` when its bucket
    on this CUDA device is not tuned yet (its first call times the candidates). ``needs``: which
    of ``(x, weight, bias, lora_A, lora_B, gates)`` require a gradient (default: the usual LoRA
    training step). ``r_act``: the active adapters' total rank; ``dropout``: whether the calls
    apply LoRA dropout."""
    device = torch.device(device)
    key = None
    if device.type == "cuda" and r_act > 0:
        key = bucket(n, d_in, d_out, r_act, dtype, per_row_gates, needs, dropout)
    return implementation(device, dtype, empty=min(n, d_in, d_out) == 0, key=key)
