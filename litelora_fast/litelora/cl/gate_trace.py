"""Why the gate recruits a repeat: per task, phase 2's loss with and without the candidate, and
the path of the gate logit, on the domain stream (whose truth is known).

``TracingLearner`` is a ``ContinualLearner`` that, before phase 2 of each task, measures the task
loss on phase 2's data (no noise, evaluation mode) in three states: the candidate on (gate 1,
what phase 1 left), the candidate off with phase 1's head and magnitudes (the paper's gate-off
state), and the candidate off with the head and magnitudes from before phase 1 (the state
``whole_state`` switches to); then it records the logit before every phase-2 step. It draws no
random number of its own, so its decisions are those of the plain learner.

    python -m litelora_fast.litelora.cl.gate_trace --seeds 100 --json docs/results/gate_trace.json
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from ..learner import ContinualLearner, _load_head
from . import mnist
from .machine import describe, machine_info
from .table import row_options


class TracingLearner(ContinualLearner):
    """``ContinualLearner`` that records, per gated task, ``trace[t]`` (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace = {}

    @torch.no_grad()
    def _full_loss(self, data, G, head, loss_of) -> float:
        # the whole gate set in one batch: no shuffle, so the learner's generator is untouched
        was = self.model.training
        self.model.eval()
        with self.use_gates(G):
            loss = float(loss_of(self._forward(head, data.X), data.Y))
        self.model.train(was)
        return loss

    def _gate_phase(self, t, data, head, mags, reuse_state, loss_of, lam):
        if getattr(data, "X", None) is None:
            raise TypeError("TracingLearner needs tensor data (X, Y) for its loss measurements")
        recruit_head = {k: v.clone() for k, v in head.state_dict().items()}
        on = self._full_loss(data, self._gate_matrix(t, mags, 1.0), head, loss_of)
        off = self._full_loss(data, self._gate_matrix(t, mags, None), head, loss_of)
        _load_head(head, reuse_state[1])
        off_reuse = self._full_loss(data, self._gate_matrix(t, reuse_state[0], None), head,
                                    loss_of)
        head.load_state_dict(recruit_head)
        self.trace[t] = {"loss_on": on, "loss_off": off, "loss_off_reuse_state": off_reuse,
                         "lam": float(lam), "logit_path": []}
        result = super()._gate_phase(t, data, head, mags, reuse_state, loss_of, lam)
        self.trace[t]["logit_path"].append(result[3][0])
        return result

    def _fit(self, data, epochs, batch_size, groups, gates_fn, head_fn, loss_of, kind,
             extra_loss=None, steps=None) -> int:
        t = len(self.records)
        if extra_loss is None or t not in self.trace:
            return super()._fit(data, epochs, batch_size, groups, gates_fn, head_fn, loss_of,
                                kind, extra_loss, steps)
        logit = groups[0]["params"][0]
        path = self.trace[t]["logit_path"]

        def traced_gates():
            path.append(float(logit.detach()[0]))          # the logit before this step
            return gates_fn()
        return super()._fit(data, epochs, batch_size, groups, traced_gates, head_fn, loss_of,
                            kind, extra_loss, steps)


def trace_domain(seed: int, label: str = "LiteLoRA (paper)",
                 protocol: str = "class-incremental", data=None) -> dict:
    """Row ``label`` of the table on the domain stream drawn with ``seed``, traced: per task its
    truth, decision and ``TracingLearner.trace`` entry."""
    method, options = row_options("domain", protocol, label)
    data = mnist.domain_stream(seed) if data is None else data
    res = mnist.run_mnist("domain", seed, method, data=data, learner_class=TracingLearner,
                          **options)
    trace = res["learner"].trace
    tasks = [dict({"task": t, "truth": truth, "recruited": rec}, **trace.get(t, {}))
             for t, (truth, rec) in enumerate(zip(res["truth"], res["recruited"]))]
    return {"seed": seed, "row": label, "protocol": protocol, "lam": options.get("lam"),
            "avg_incremental": res["avg_incremental"], "tasks": tasks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[100])
    p.add_argument("--rows", nargs="+", default=["LiteLoRA (paper)", "library (all additions)"])
    p.add_argument("--protocols", nargs="+", default=["class-incremental"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TRITON_INTERPRET", "0")
    machine = machine_info(threads=1)
    print(describe(machine))
    runs = []
    for seed in args.seeds:
        data = mnist.domain_stream(seed)
        for protocol in args.protocols:
            for label in args.rows:
                r = trace_domain(seed, label, protocol, data)
                runs.append(r)
                print(f"seed {seed} {protocol} {label} (lam {r['lam']}):")
                for k in r["tasks"][1:]:
                    path = k["logit_path"]
                    print(f"  task {k['task']:2d} {k['truth']:<7} {'R' if k['recruited'] else '-'}"
                          f"  loss on {k['loss_on']:.3f} off {k['loss_off']:.3f} (reuse state "
                          f"{k['loss_off_reuse_state']:.3f})  logit {path[0]:+.2f} -> "
                          f"{path[-1]:+.2f} (min {min(path):+.2f}, max {max(path):+.2f})",
                          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "runs": runs}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
