"""``python -m litelora_fast report``: the markdown table and the PNG from a real benchmark JSON.

The input is ``benchmarks/results/cpu_bench.json``, written by a real CPU run of
``pytest benchmarks/ --benchmark-json``; a second input is the same run cut to JSON lines (the
form a killed GPU run leaves behind).
"""
import json
import os

import pytest

from litelora_fast.tools import report

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "cpu_bench.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench():
    with open(BENCH) as f:
        return json.load(f)


def _rows(md: str) -> list:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_table_has_one_row_per_benchmark_with_its_numbers(bench, tmp_path):
    assert report.main([BENCH, "--out", str(tmp_path), "--name", "t"]) == 0
    md = (tmp_path / "t.md").read_text()
    rows = _rows(md)
    infos = [b["extra_info"] for b in bench["benchmarks"]]
    assert len(rows) == len(infos) > 0
    head = [c.strip() for c in md.splitlines()[md.splitlines().index(
        next(line for line in md.splitlines() if line.startswith("| shape")))].strip("|").split("|")]
    col = {name: i for i, name in enumerate(head)}
    by_key = {(r[col["K"]], r[col["gates"]], r[col["zero gates"]], r[col["dropout"]],
               r[col["mode"]]): r for r in rows}
    assert len(by_key) == len(rows)
    for info in infos:
        c = info["case"]
        key = (str(c["k"]), "train" if c["train_gates"] else "frozen",
               f"{int(c['k'] * c['sparsity'])}/{c['k']}", f"{c.get('dropout', 0.0):g}",
               info["mode"])
        row = by_key[key]
        assert row[col["ours ms"]] == f"{info['ms_ours']:.3f}"
        assert row[col["(a) ref ms"]] == f"{info['ms_reference']:.3f}"
        assert row[col["x vs (a)"]] == f"{info['ms_reference'] / info['ms_ours']:.2f}"
        assert row[col["x vs (b)"]] == f"{info['ms_packed'] / info['ms_ours']:.2f}"


def test_gpu_rows_show_candidates_and_the_fused_gemms_against_cublas(bench, tmp_path):
    # a GPU-shaped entry as harness.run_case writes it (the fields tuning_record.py records)
    info = dict(bench["benchmarks"][0]["extra_info"])
    case = dict(info["case"], device="cuda", dtype="bfloat16", dropout=0.1)
    info.update(case=case, case_id="gpu-case", ms_hybrid=0.5, impl_ours="hybrid",
                candidates_ours={"bucket": "b", "times": {"triton": 1.2e-3, "torch": 1.0e-3,
                                                          "hybrid": 0.9e-3}, "winner": "hybrid"},
                base_gemm={"R": 16, "fwd": {"ms_triton": 1.1, "ms_cublas_base": 1.0,
                                            "ms_cublas_composite": 1.05, "tflops_triton": 600.0,
                                            "tflops_cublas_base": 700.0, "pct_of_flinear": 85.7,
                                            "pct_of_composite": 95.5},
                           "dx": {"error": "RuntimeError: out of resources"}},
                triton_configs={"fused_forward": "BLOCK_M=128,BLOCK_N=256,w8,s3"})
    path = tmp_path / "gpu.jsonl"
    path.write_text(json.dumps({"name": "x", "extra_info": info}) + "\n")
    md = open(report.write_report(str(path), str(tmp_path), "g")[0]).read()
    row = _rows(md)[0]
    assert "triton 1.20 / torch 1.00 / hybrid 0.90 -> hybrid" in row
    assert "86 / -" in row and "0.500" in row and "0.1" in row
    assert "## What tuning needs" in md
    assert "Triton 1.100 ms (600 TFLOP/s), F.linear 1.000 ms (700)" in md
    assert "dx: RuntimeError: out of resources" in md
    assert "fused_forward: BLOCK_M=128,BLOCK_N=256,w8,s3" in md


def test_header_names_date_device_and_versions(bench, tmp_path):
    md_path, _ = report.write_report(BENCH, str(tmp_path), "h")
    md = open(md_path).read()
    info = bench["benchmarks"][0]["extra_info"]
    assert bench["datetime"] in md
    assert "CPU only" in md
    assert f"torch {info['torch']}" in md and f"triton {info['triton']}" in md
    assert "perf_counter median" in md


def test_plot_is_a_png(tmp_path):
    _, png = report.write_report(BENCH, str(tmp_path), "p")
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_reads_json_lines_of_an_unfinished_run(bench, tmp_path):
    lines = tmp_path / "cut.jsonl"
    kept = bench["benchmarks"][:2]
    lines.write_text("".join(json.dumps({"name": b["name"], "extra_info": b["extra_info"]}) + "\n"
                             for b in kept))
    md_path, _ = report.write_report(str(lines), str(tmp_path))
    assert len(_rows(open(md_path).read())) == 2


def test_rejects_a_json_without_our_entries(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmarks": [{"name": "x", "extra_info": {}}]}))
    with pytest.raises(ValueError, match="no litelora-fast benchmark entries"):
        report.write_report(str(other), str(tmp_path))


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    # (the command line turns it into a one-line error: tests/test_cli.py)
    with pytest.raises(FileNotFoundError, match="no such file"):
        report.main([str(tmp_path / "missing.json"), "--out", str(tmp_path)])


def test_peft_peer_columns(bench, tmp_path):
    md_path, _ = report.write_report(BENCH, str(tmp_path), "peft")
    md = open(md_path).read()
    head = next(line for line in md.splitlines() if line.startswith("| shape"))
    col = {name.strip(): i for i, name in enumerate(head.strip("|").split("|"))}
    by_key = {}
    for r in _rows(md):
        by_key[(r[col["K"]], r[col["gates"]], r[col["zero gates"]], r[col["mode"]])] = r
    for b in bench["benchmarks"]:
        info, c = b["extra_info"], b["extra_info"]["case"]
        row = by_key[(str(c["k"]), "train" if c["train_gates"] else "frozen",
                      f"{int(c['k'] * c['sparsity'])}/{c['k']}", info["mode"])]
        if c["train_gates"]:   # PEFT has no gates to train
            assert row[col["PEFT ms"]] == "-" and row[col["x vs PEFT"]] == "-"
        else:
            assert row[col["PEFT ms"]] == f"{info['ms_peft']:.3f}"
            assert row[col["x vs PEFT"]] == f"{info['ms_peft'] / info['ms_ours']:.2f}"
        assert row[col["ours impl"]] == info["impl_ours"]


def test_default_output_folder_is_out_under_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.main([os.path.abspath(BENCH), "--name", "d"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(tmp_path / "out")) == ["d.md", "d.png"]
