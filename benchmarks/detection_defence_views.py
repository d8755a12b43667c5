"""How much does each candidate view make the querying count attacker pay? PBMC3k.

The companion of ``benchmarks/detection_defence.py``: that script compares the stored
detectors (``fusion='logistic'`` / ``'or'``); this one asks, per candidate *view* used alone as
a detector, what an attacker who queries it pays — the ceiling of any fusion built on it. Per
seed: a classifier (``train_classifier(seed=...)``), a twin fitted on its training cells (as
``meta_detect`` fits it), then each view below, thresholded split-conformal at 5% on the clean
validation cells (flag: score ≥ threshold; higher is more suspicious), and attacked on
``--n-attack`` test cells (the first of the cells ``detection_defence.py`` attacks) by the
count-space search of ``tl.adaptive_count_attack`` that queries the view's exact score (λ 1 and
3, a cell's cost is its cheapest evasion; ≤ ``--budget`` UMIs, ≤ 3 per gene). Cost: UMIs of
cells flipped with the view under its threshold, ``inf`` otherwise; "median" is over all
attacked cells (UMIs to evade 50% of the time).

Views (ŷ: the classifier's predicted class; every twin a multinomial logistic regression on the
training cells, as the consistency detector's):

* ``margin`` — minus the classifier's top-1 − top-2 logit;
* ``squeeze`` — log(1 − p(ŷ)) of the classifier on the cell clipped to ±5 z;
* ``twin`` — log(1 − q(ŷ)) of the twin (log1p of counts normalised to 1,000; C = 0.1);
* ``twin C0.03`` — the same twin, 3× stronger L2 penalty;
* ``twin floor1`` — a twin on log1p(max(level − 1, 0)) (normalised to 1,000): expression
  below one part in a thousand is ignored (a count-space squeeze of the twin's input);
* ``count squeeze`` — log(1 − p(ŷ)) of the classifier on the cell with one UMI subtracted from
  every gene (the unit found from the cell's smallest non-zero value);
* ``2 twins`` / ``4 twins`` — twins on disjoint random gene halves / quarters, OR-ed, each at
  its share of 5% (Bonferroni);
* ``OR`` — margin, squeeze and twin OR-ed at 1/6, 1/6 and 2/3 of 5% (``fusion='or'``);
  ``OR depth-aware`` — the same, each view's threshold raised to its conformal threshold over
  the validation cells down-sampled to 50% and 25% as well (so that shallower sequencing is
  not flagged).

Column ``down-sampled flagged``: the test cells down-sampled to 50% (binomial thinning) flagged
by the view at its threshold (a benign shift; ≤ 5% wanted).

Also: ``undefended`` (the classifier's first flip) and ``twin flip`` (the UMIs that flip the
twin itself: what any view built on it is bounded by).

Run::

    OMP_NUM_THREADS=1 python benchmarks/detection_defence_views.py [--seeds 42 0 1]
        [--n-attack 50] [--budget 60] [--data DIR]

Writes ``benchmarks/results/detection_defence_views.{csv,md}``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from scipy import sparse

import scadv
from scadv import _model as M
from scadv import _recipe as R
from scadv.tl._detect import _common as MC
from scadv.tl._detect import _consistency as CO
from scadv.tl._detect import _count_search as CS
from scadv.tl._detect import _meta_detect as MD

CPU = torch.device("cpu")
ALPHA = 0.05
LAMS = (1.0, 3.0)
View = Callable[[torch.Tensor], torch.Tensor]  # model input -> (n, m) scores, OR-ed


def one_seed(data: Path, seed: int, n_attack: int, budget: int) -> list[dict[str, object]]:
    raw = ad.read_h5ad(data / "pbmc3k_raw.h5ad")
    a = raw[raw.obs["cell_type"].notna()].copy()
    scadv.pp.prepare(a)
    scadv.tl.train_classifier(a, "cell_type", seed=seed, progress=False)
    rec = a.uns["scadv"]["classifier"]
    recipe = rec["prepare"]
    classes = [str(c) for c in rec["classes"]]
    net = M.from_record(rec, CPU).eval()
    net.requires_grad_(False)
    src = R.source(a, recipe, what="adata")
    split = a.obs["scadv_split"].astype(str).to_numpy()
    y = np.asarray([classes.index(c) for c in a.obs["cell_type"].astype(str)])
    test, val = np.flatnonzero(split == "test"), np.flatnonzero(split == "val")
    train = np.flatnonzero(split == "train")
    rng = np.random.default_rng(seed)  # the cells of detection_defence.py, first n_attack
    cells = rng.choice(test, size=min(100, len(test)), replace=False)[:n_attack]
    lib = a.obs["scadv_library_size"].to_numpy(float)
    lib_range = (float(lib.min()), float(lib.max()))
    counts, lib_c = src.counts(cells)
    x_val = torch.as_tensor(src.rows(val))
    pred = M.infer(net, src.rows(cells), device=CPU)[1].argmax(1)
    x_train = src.rows(train)
    r_train = CO.twin_inputs(x_train, recipe)
    n_cls, n_genes = len(classes), r_train.shape[1]
    mod = CO.Consistency(net, recipe, CO.record(CO.fit_twin(r_train, y[train], n_cls, seed),
                                                MD._NO_FUSION)).eval()
    mod.requires_grad_(False)
    max_value = float(recipe["max_value"])

    def level(x: torch.Tensor) -> torch.Tensor:  # counts normalised to the recipe's total
        z = x.clamp(-max_value, max_value)
        return torch.expm1(z * mod.std + mod.mean).clamp(min=0)

    def y_hat(x: torch.Tensor) -> torch.Tensor:
        return net(x).detach().argmax(1)

    def twin(feat: Callable[[torch.Tensor], torch.Tensor], genes: np.ndarray | None = None,
             c: float = CO.TWIN_C) -> Callable[[torch.Tensor], torch.Tensor]:
        """Twin logits on features ``feat`` of the model input (``genes``: its support)."""
        f_train = feat(torch.as_tensor(x_train)).numpy()
        g = np.arange(n_genes) if genes is None else genes
        before, CO.TWIN_C = CO.TWIN_C, c
        try:
            w, b = CO.fit_twin(f_train[:, g], y[train], n_cls, seed)
        finally:
            CO.TWIN_C = before
        full = np.zeros((n_cls, n_genes), np.float32)
        full[:, g] = w
        wt, bt = torch.as_tensor(full), torch.as_tensor(b)
        return lambda x: feat(x) @ wt.T + bt

    def floor_feat(x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(torch.relu(level(x) * mod.ratio - 1.0))

    def count_squeezed(x: torch.Tensor) -> torch.Tensor:
        lev = level(x)
        unit = torch.where(lev > 0, lev, torch.full_like(lev, float("inf"))).amin(
            1, keepdim=True).detach()
        ls = torch.relu(lev - unit)
        return ((torch.log1p(ls) - mod.mean) / mod.std).clamp(-max_value, max_value)

    def other(logits: Callable[[torch.Tensor], torch.Tensor]) -> View:
        return lambda x: CO.log_other(logits(x), y_hat(x)).unsqueeze(1)

    perm = np.random.default_rng(1000 + seed).permutation(n_genes)
    views: dict[str, View] = {
        "margin": lambda x: -mod.views(x)[:, :1],
        "squeeze": lambda x: mod.views(x)[:, 1:2],
        "twin": lambda x: mod.views(x)[:, 2:3],
        "twin C0.03": other(twin(mod.twin_input, c=0.03)),
        "twin floor1": other(twin(floor_feat)),
        "count squeeze": other(lambda x: net(count_squeezed(x))),
    }
    for k in (2, 4):
        subsets = [other(twin(mod.twin_input, genes=g)) for g in np.array_split(perm, k)]
        views[f"{k} twins"] = lambda x, s=subsets: torch.cat([v(x) for v in s], dim=1)
    sign = torch.as_tensor(CO.OR_SIGN)
    views["OR"] = views["OR depth-aware"] = lambda x: mod.views(x) * sign
    shares = {"OR": np.asarray(CO.OR_SPLIT), "OR depth-aware": np.asarray(CO.OR_SPLIT)}

    def thinned(idx: np.ndarray, frac: float, r: np.random.Generator) -> torch.Tensor:
        c, lib_i = src.counts(idx)
        c = sparse.csr_matrix(c)
        rest = lib_i - np.asarray(c.sum(axis=1)).ravel()
        c.data = r.binomial(c.data.astype(np.int64), frac).astype(np.float32)
        lib_t = np.asarray(c.sum(axis=1)).ravel() + r.binomial(np.rint(rest).astype(np.int64),
                                                                frac)
        ok = lib_t > 0
        return torch.as_tensor(MD._rows_of(src, c[ok], lib_t[ok]))

    x_down_test = thinned(test, 0.5, np.random.default_rng(seed + 99))
    r_val = np.random.default_rng(seed + 7)
    x_down_val = torch.cat([thinned(val, f, r_val) for f in (0.5, 0.25)])

    def cost(res: CS.SearchResult) -> np.ndarray:
        return np.where(res.success, res.umis, np.inf)

    common = {"budget": budget, "library_range": lib_range, "device": CPU}
    rows: list[dict[str, object]] = []
    plain = cost(CS.search(CS.margin_objective(net, pred, device=CPU), counts, lib_c, recipe,
                           **common))
    rows.append({"seed": seed, "view": "undefended", "median_umis": float(np.median(plain)),
                 "evaded": float(np.isfinite(plain).mean())})
    twin_logits = twin(mod.twin_input)
    twin_pred = twin_logits(torch.as_tensor(src.rows(cells))).argmax(1).numpy()
    flip = cost(CS.search(CS.margin_objective(twin_logits, twin_pred, device=CPU), counts,
                          lib_c, recipe, **common))
    rows.append({"seed": seed, "view": "twin flip", "median_umis": float(np.median(flip)),
                 "evaded": float(np.isfinite(flip).mean())})
    x_test = torch.as_tensor(src.rows(test))
    for name, view in views.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            s_val = view(x_val).numpy().astype(np.float64)
            s_test = view(x_test).numpy()
            s_down = view(x_down_test).numpy()
        m = s_val.shape[1]
        share = shares.get(name, np.full(m, 1.0 / m))
        thr = np.array([MC.conformal(s_val[:, j], ALPHA * share[j])["threshold"]
                        for j in range(m)])
        if name == "OR depth-aware":
            with torch.no_grad():
                s_dv = view(x_down_val).numpy().astype(np.float64)
            thr = np.maximum(thr, [MC.conformal(s_dv[:, j], ALPHA * share[j])["threshold"]
                                   for j in range(m)])
        iqr = np.subtract(*np.quantile(s_val, [0.75, 0.25], axis=0))
        thr_t, iqr_t = torch.as_tensor(thr, dtype=torch.float32), torch.as_tensor(
            np.where(iqr > 1e-6, iqr, 1.0), dtype=torch.float32)

        def logit(x: torch.Tensor, v: View = view, t: torch.Tensor = thr_t,
                  s: torch.Tensor = iqr_t) -> torch.Tensor:
            return ((v(x) - t) / s).max(dim=1).values  # ≥ 0: flagged

        best = np.full(len(cells), np.inf)
        for lam in LAMS:
            res = CS.search(CS.evading_objective(net, logit, 0.0, pred, lam=lam, device=CPU),
                            counts, lib_c, recipe, **common)
            best = np.minimum(best, cost(res))
        rows.append({"seed": seed, "view": name, "median_umis": float(np.median(best)),
                     "evaded": float(np.isfinite(best).mean()),
                     "clean_test_flagged": float((s_test >= thr).any(axis=1).mean()),
                     "down_flagged": float((s_down >= thr).any(axis=1).mean()),
                     "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--n-attack", type=int, default=50)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results"
                        / "detection_defence_views")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sc.settings.verbosity = 0
    rows: list[dict[str, object]] = []
    for seed in args.seeds:
        rows += one_seed(args.data, seed, args.n_attack, args.budget)
        df = pd.DataFrame(rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out.with_suffix(".csv"), index=False)
        plain = df[df.view == "undefended"].set_index("seed").median_umis
        df["ratio"] = df.median_umis / df.seed.map(plain)
        seeds = " ".join(str(s) for s in dict.fromkeys(df.seed))
        out = [f"# Each view alone against the querying count attacker, PBMC3k (seeds {seeds})",
               "", f"Command: `python benchmarks/detection_defence_views.py --seeds {seeds} "
               f"--n-attack {args.n_attack} --budget {args.budget}`. Threshold split-conformal "
               "at 5% on the validation cells; attacker λ 1 and 3, best per cell; median UMIs "
               "over attacked cells (inf: fewer than half evaded); per seed.", "",
               "| view | median UMIs to evade (per seed) | ratio to undefended | evaded | "
               "clean test cells flagged | down-sampled flagged |", "|---|---|---|---|---|---|"]
        for view in dict.fromkeys(df.view):
            d = df[df.view == view]

            def f(col: str, d: pd.DataFrame = d) -> str:
                return " / ".join(f"{v:.2f}" if col != "median_umis" else f"{v:g}"
                                  for v in d[col])
            flagged = " | ".join(f(c) if d[c].notna().all() else "–"
                                 for c in ("clean_test_flagged", "down_flagged"))
            out.append(f"| {view} | {f('median_umis')} | {f('ratio')} | {f('evaded')} | "
                       f"{flagged} |")
        args.out.with_suffix(".md").write_text("\n".join(out) + "\n")
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
