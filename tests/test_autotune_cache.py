"""The autotune disk cache with concurrent writers (DDP ranks tuning at once) and the public
record of every candidate's time, ``autotune.timings()`` (issue 18, item 4). CPU only: a fake
clock and a fake GPU name stand in for CUDA events and the device."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from litelora_fast.op import autotune

CPU = torch.device("cpu")
NEEDS = (True, False, False, True, True, False)
MACHINE = {"gpu": "Fake H200", "torch": "t", "triton": "3.6.0"}
WRITERS, BUCKETS_EACH = 8, 5

# One writer process: waits until every writer has imported torch (a file barrier), then tunes
# its own buckets (rank r: ranks 1000 * (r + 1) + i) into the shared cache directory.
WRITER = textwrap.dedent("""
    import os, sys, time
    import torch
    from litelora_fast.op import autotune
    directory, rank, writers, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    machine = {machine!r}
    open(os.path.join(directory, f"ready-{{rank}}"), "w").close()
    while sum(f.startswith("ready-") for f in os.listdir(directory)) < writers:
        time.sleep(0.005)
    tuner = autotune.Tuner(directory, timer=lambda fn: 1.0 if fn.candidate == "torch" else 2.0,
                           machine=lambda d: dict(machine))
    def fn(name):
        f = lambda: None
        f.candidate = name
        return f
    for i in range(each):
        key = autotune.bucket(64, 32, 16, 1000 * (rank + 1) + i, torch.float16, False,
                              {needs!r})
        tuner.choose(torch.device("cpu"), key, {{n: fn(n) for n in autotune.CANDIDATES}})
""").format(machine=MACHINE, needs=NEEDS)


def _key(r):
    return autotune.bucket(64, 32, 16, r, torch.float16, False, NEEDS)


def _fn(name):
    def fn():
        pass
    fn.candidate = name
    return fn


FNS = {name: _fn(name) for name in autotune.CANDIDATES}


def test_concurrent_writers_lose_no_entry(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(rank),
                               str(WRITERS), str(BUCKETS_EACH)], stderr=subprocess.PIPE, text=True)
             for rank in range(WRITERS)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    expected = {autotune.bucket_name(_key(1000 * (rank + 1) + i))
                for rank in range(WRITERS) for i in range(BUCKETS_EACH)}

    def never(fn):
        raise AssertionError("a bucket written by another process was timed again")
    reader = autotune.Tuner(str(tmp_path), timer=never, machine=lambda d: dict(MACHINE))
    entries = json.load(open(reader.path(CPU)))["entries"]
    assert set(entries) == expected, f"{len(expected - set(entries))} of {len(expected)} lost"
    for rank in range(WRITERS):
        for i in range(BUCKETS_EACH):
            assert reader.choose(CPU, _key(1000 * (rank + 1) + i), FNS) == "torch"


def _tuner(tmp_path, ms):
    return autotune.Tuner(str(tmp_path), timer=lambda fn: (fn(), ms[fn.candidate])[1],
                          machine=lambda d: dict(MACHINE))


def test_timings_record_every_candidate_fresh_and_from_the_cache(tmp_path, monkeypatch):
    tuner = _tuner(tmp_path, {"triton": 2.5, "hybrid": 3.0, "torch": 4.0})
    assert tuner.timings() == {}
    tuner.choose(CPU, _key(8), FNS)
    name8 = autotune.bucket_name(_key(8))
    assert tuner.timings() == {name8: {"times": {"triton": 2.5e-3, "hybrid": 3e-3, "torch": 4e-3},
                                       "winner": "triton", "device": "cpu"}}
    with pytest.warns(RuntimeWarning, match="'torch' failed"):
        tuner.choose(CPU, _key(16), {"triton": _fn("triton"), "torch": _broken("torch")})
    name16 = autotune.bucket_name(_key(16))

    # A fresh process: a bucket it looks up and one it does not are both reported, from the file.
    fresh = _tuner(tmp_path, {"triton": 9.0, "hybrid": 9.0, "torch": 9.0})
    monkeypatch.setattr(autotune, "TUNER", fresh)
    assert fresh.lookup(CPU, _key(8)) == "triton"
    got = autotune.timings()
    assert got[name8] == {"times": {"triton": 2.5e-3, "hybrid": 3e-3, "torch": 4e-3},
                          "winner": "triton", "device": "cpu"}
    assert got[name16] == {"times": {"triton": 2.5e-3, "torch": None}, "winner": "triton",
                           "device": "cpu"}
    # ... and one it times itself joins them.
    fresh.choose(CPU, _key(32), FNS)
    assert autotune.timings()[autotune.bucket_name(_key(32))]["times"] == {
        "triton": 9e-3, "hybrid": 9e-3, "torch": 9e-3}
    assert len(autotune.timings()) == 3


def _broken(name):
    def fn():
        raise RuntimeError("cannot run")
    fn.candidate = name
    return fn


def test_timings_of_a_failed_candidate(tmp_path):
    def clock(fn):
        fn()
        return 3.0
    tuner = autotune.Tuner(str(tmp_path), timer=clock, machine=lambda d: dict(MACHINE))
    with pytest.warns(RuntimeWarning, match="'torch' failed"):
        tuner.choose(CPU, _key(4), {"triton": _fn("triton"), "torch": _broken("torch")})
    assert tuner.timings()[autotune.bucket_name(_key(4))] == {
        "times": {"triton": 3e-3, "torch": None}, "winner": "triton", "device": "cpu"}
