"""Two result JSONs of the same seeds side by side (two machines, or a run and its one-ulp
nudge): which rows differ, by how much, and which verdicts change.

    python -m litelora_fast.litelora.cl.compare docs/results/demo.json out/demo.json
    python -m litelora_fast.litelora.cl.compare A.json B.json --json docs/results/compare.json

A row "differs" where any seed's record differs in its anytime accuracies or its decisions. The
verdicts compared are the goal's on the means (``met``, ``decisions_met``, ``informative``) and on
the spread over seeds (``cl.spread``).
"""
from __future__ import annotations

import argparse
import json

from .machine import describe
from .table import goals

VERDICT_KEYS = ("met", "met_on_spread", "decisions_met", "decisions_on_spread")


def _summary(res: dict) -> dict:
    """The summary of a demo JSON (``results``) or a table JSON (``summary``)."""
    for key in ("results", "summary"):
        if key in res:
            return res[key]
    raise ValueError(f"not a demo or table JSON: keys {sorted(res)}")


def compare(a: dict, b: dict) -> dict:
    """Rows and verdicts of result JSONs ``a`` and ``b`` (module docstring)."""
    if a.get("seeds") != b.get("seeds"):
        raise ValueError(f"the JSONs ran different seeds: {a.get('seeds')} and {b.get('seeds')}")
    sa, sb = _summary(a), _summary(b)
    rows, verdicts = [], []
    for stream, by_protocol in sa.items():
        for protocol, cells in by_protocol.items():
            for label, ra in cells.items():
                rb = sb.get(stream, {}).get(protocol, {}).get(label)
                if rb is None:
                    continue
                same = [(x["anytime"], x["recruited"]) == (y["anytime"], y["recruited"])
                        for x, y in zip(ra["per_seed"], rb["per_seed"])]
                moved = [(abs(x["avg_incremental"] - y["avg_incremental"]),
                          abs(x["active_adapters"] - y["active_adapters"]))
                         for x, y in zip(ra["per_seed"], rb["per_seed"])]
                rows.append({"stream": stream, "protocol": protocol, "row": label,
                             "seeds_differing": same.count(False), "seeds": len(same),
                             # the most one seed's A and adapter count moved
                             "A_moved_max": max(m[0] for m in moved),
                             "adapters_moved_max": max(m[1] for m in moved),
                             "A": [ra["avg_incremental"], rb["avg_incremental"]],
                             "final": [ra["avg_accuracy"], rb["avg_accuracy"]],
                             "adapters": [ra["active_adapters"], rb["active_adapters"]]})
    ga, gb = goals(sa), goals(sb)
    for stream, by_protocol in ga.items():
        for protocol, cell in by_protocol.items():
            other = gb.get(stream, {}).get(protocol)
            if other is None:
                continue
            for key in ("informative", "informative_on_spread"):
                if key in cell:
                    verdicts.append({"stream": stream, "protocol": protocol, "row": None,
                                     "verdict": key, "values": [cell[key], other.get(key)]})
            for label, v in cell["rows"].items():
                w = other["rows"].get(label, {})
                for key in VERDICT_KEYS:
                    if key in v and v[key] is not None:
                        verdicts.append({"stream": stream, "protocol": protocol, "row": label,
                                         "verdict": key, "values": [v[key], w.get(key)]})
    return {"machines": [a.get("machine"), b.get("machine")], "rows": rows,
            "rows_differing": sum(r["seeds_differing"] > 0 for r in rows),
            "verdicts": verdicts,
            "verdicts_changed": [v for v in verdicts if v["values"][0] != v["values"][1]]}


def format_compare(c: dict, names=("a", "b")) -> str:
    lines = [f"{name}: {describe(m)}" for name, m in zip(names, c["machines"])]
    lines.append(f"rows differing: {c['rows_differing']} of {len(c['rows'])}")
    for r in c["rows"]:
        if r["seeds_differing"]:
            lines.append(f"  {r['stream']}, {r['protocol']}, {r['row']}: {r['seeds_differing']}/"
                         f"{r['seeds']} seeds; A {r['A'][0]:.2f} vs {r['A'][1]:.2f}, final "
                         f"{r['final'][0]:.2f} vs {r['final'][1]:.2f}, adapters "
                         f"{r['adapters'][0]:.2f} vs {r['adapters'][1]:.2f}; one seed moved "
                         f"up to {r['A_moved_max']:.2f} points of A, "
                         f"{r['adapters_moved_max']:g} adapters")
    lines.append(f"verdicts changed: {len(c['verdicts_changed'])} of {len(c['verdicts'])}")
    for v in c["verdicts_changed"]:
        lines.append(f"  {v['stream']}, {v['protocol']}, {v['row'] or '(stream)'}: "
                     f"{v['verdict']} {v['values'][0]} -> {v['values'][1]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", default=None, help="write the comparison here")
    args = p.parse_args(argv)
    with open(args.a) as f:
        a = json.load(f)
    with open(args.b) as f:
        b = json.load(f)
    c = compare(a, b)
    c["files"] = [args.a, args.b]
    print(format_compare(c, (args.a, args.b)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(c, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
