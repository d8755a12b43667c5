"""Single-gene attack speed: scadv's batched scan against adverSCarial-style evaluation, in one run.

The search: every model gene × every one of PBMC3k's 9 Seurat cell types × ``perc1`` and
``perc99`` (2,000 × 9 × 2 = 36,000 probes), against the stored MLP and against a random forest
(100 trees, the "scRF" of the adverSCarial paper) fitted on the same input.

For each classifier it reports wall time, classifier calls and rows (cells) classified for:

* **scadv, exhaustive** — :func:`scadv.tl.single_gene` (default search): exact, many variants
  per call, only the cells a modification changes are re-classified (rank-one updates of the
  MLP's cached first layer; partial re-traversal of the forest's trees).
* **scadv, exhaustive, stacked rows** (forest only) — the same scan through one
  ``predict_proba`` per batch of stacked variant rows (plain scikit-learn batching).
* **scadv, dichotomy** — adverSCarial's bucket dichotomy (100 first buckets), one batched call
  per level.
* **threads** — the MLP scan again at 1 and 2 torch threads (on a busy machine one thread
  can be the faster).
* **adverSCarial-style** — one full re-classification of all 2,700 cells per probe, no
  batching, one probe at a time (as adverSCarial's R code calls its classifier): the
  dichotomy is run in full; the exhaustive search (36,000 probes) is timed on a random sample
  of probes and extrapolated (marked "est.").

Every sampled adverSCarial-style probe is checked against scadv's table (same label).

Run::

    python benchmarks/single_gene.py [--data ../shared/data/pbmc3k_raw.h5ad] [--threads 2]
        [--sample 200] [--no-serial-dichotomy]
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin while they wait for each other; when other processes share the
# cores, that spinning made this scan 3-5× slower (46-67 s instead of 14 s on 2 busy cores).
# On a quiet machine sleeping waits cost about 12 % (MLP scan 6.3 s against 5.6 s spinning).
# Set before torch loads; run with OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from sklearn.ensemble import RandomForestClassifier

import scadv
from scadv import classifiers as CL
from scadv.tl._genes import _modifications as MOD

MODS = ("perc1", "perc99")


def load(path: Path) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    scadv.pp.prepare(adata, subset=True)  # the model input in X: read directly below
    scadv.tl.train_classifier(adata, "cell_type", seed=42, progress=False)
    return adata


def scan(adata, classifier, key, **kw) -> dict:
    start = time.perf_counter()
    scadv.tl.single_gene(adata, cluster_key="cell_type", target=CLUSTERS, classifier=classifier,
                         modification=list(MODS), key_added=key, progress=False, **kw)
    rec = adata.uns["scadv"][key]
    return {"seconds": time.perf_counter() - start, "calls": int(rec["n_classifier_calls"]),
            "rows": int(rec["n_rows_classified"]),
            "flips": int(rec["table"]["flipped"].sum()), "table": rec["table"]}


class Serial:
    """adverSCarial's evaluation: the classifier sees the whole matrix once per probe."""

    def __init__(self, adata: ad.AnnData, proba) -> None:
        self.x = np.asarray(adata.X, dtype=np.float32)
        self.proba = proba
        self.clusters = adata.obs["cell_type"].astype(str).to_numpy()
        self.calls = 0
        self.values = {}
        for c in CLUSTERS:
            mask = self.clusters == c
            self.values[c] = MOD.new_values(MOD.parse_many(list(MODS)), self.x,
                                            np.arange(self.x.shape[1]), mask,
                                            np.random.default_rng(0))

    def label(self, cluster: str, genes: np.ndarray, mod: int) -> str:
        """One probe: copy the matrix, modify ``genes`` in the cluster, classify every cell."""
        x = self.x.copy()
        mask = self.clusters == cluster
        rows = np.flatnonzero(mask)
        x[np.ix_(rows, genes)] = self.values[cluster][mod][:, genes]
        proba = self.proba(x)
        self.calls += 1
        pred = proba[mask].argmax(axis=1)
        counts = np.bincount(pred, minlength=proba.shape[1]).astype(float)
        counts += proba[mask].sum(axis=0) / (mask.sum() + 1.0)  # ties: higher mean probability
        return CLASSES[int(counts.argmax())]

    def dichotomy(self, first_split: int = 100) -> int:
        """adverSCarial's advSingleGene search, probe by probe; returns the flips found."""
        found = 0
        d = self.x.shape[1]
        for c in CLUSTERS:
            base = self.label(c, np.zeros(0, dtype=np.int64), 0)
            for m in range(len(MODS)):
                stack = [np.arange(d)[b::first_split] for b in range(first_split)][::-1]
                while stack:
                    genes = stack.pop()
                    if self.label(c, genes, m) == base:
                        continue
                    if len(genes) == 1:
                        found += 1
                    else:
                        stack += [genes[1::2], genes[0::2]]
        return found


def fmt(row: dict) -> str:
    est = " (est.)" if row.get("estimated") else ""
    return (f"| {row['classifier']} | {row['method']} | {row['seconds']:.1f}{est} | "
            f"{row['calls']:,} | {row['rows']:,} | {row.get('flips', '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("SCADV_DATA", "../shared/data"))
                        / "pbmc3k_raw.h5ad")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--sample", type=int, default=200,
                        help="adverSCarial-style exhaustive probes timed per classifier")
    parser.add_argument("--no-serial-dichotomy", action="store_true",
                        help="skip the full adverSCarial-style dichotomy (minutes on a forest)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sc.settings.verbosity = 0
    warnings.filterwarnings("ignore")
    load_start = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; load average {load_start:.2f} at "
          "start")

    adata = load(args.data)
    global CLUSTERS, CLASSES
    CLUSTERS = list(adata.obs["cell_type"].cat.categories)
    n_probes = adata.n_vars * len(CLUSTERS) * len(MODS)
    labelled = adata.obs["cell_type"].notna().to_numpy()
    rf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=2).fit(
        adata.X[labelled], adata.obs["cell_type"][labelled].astype(str))
    mlp = CL.resolve(None, adata).bind(adata.var_names)
    print(f"PBMC3k: {adata.n_obs} cells × {adata.n_vars} model genes, {len(CLUSTERS)} clusters "
          f"({int(labelled.sum())} labelled cells), {n_probes:,} single-gene probes "
          f"({len(MODS)} modifications)\n")

    rows = []
    for name, clf, proba in (("MLP", None, mlp.predict_proba), ("random forest", rf, None)):
        if proba is None:
            proba = CL.SklearnClassifier(rf).bind(adata.var_names).predict_proba
        CLASSES = list(CL.resolve(clf, adata).classes)
        ex = scan(adata, clf, f"ex_{name}")
        rows.append({"classifier": name, "method": "scadv, exhaustive", **ex})
        if clf is not None:
            stacked = CL.FunctionClassifier(rf.predict_proba, classes=CLASSES, name="rf")
            st = scan(adata, stacked, f"st_{name}")
            assert st["table"]["new_label"].equals(ex["table"]["new_label"])
            rows.append({"classifier": name, "method": "scadv, exhaustive, stacked rows", **st})
        di = scan(adata, clf, f"di_{name}", search="dichotomy")
        rows.append({"classifier": name, "method": "scadv, dichotomy", **di})

        serial = Serial(adata, proba)
        table = ex["table"]
        rng = np.random.default_rng(0)
        pick = rng.choice(len(table), size=min(args.sample, len(table)), replace=False)
        gene_pos = {g: i for i, g in enumerate(adata.var_names)}
        start = time.perf_counter()
        for i in pick:
            r = table.iloc[int(i)]
            got = serial.label(r["cluster"], np.array([gene_pos[r["gene"]]]),
                               MODS.index(r["modification"]))
            assert got == r["new_label"], (r["cluster"], r["gene"], got, r["new_label"])
        per_probe = (time.perf_counter() - start) / len(pick)
        rows.append({"classifier": name, "method": "adverSCarial-style, exhaustive",
                     "seconds": per_probe * n_probes, "calls": n_probes,
                     "rows": n_probes * adata.n_obs, "estimated": True,
                     "flips": ""})
        print(f"{name}: {len(pick)} adverSCarial-style probes agree with scadv's table "
              f"({per_probe * 1e3:.1f} ms per probe)")
        if not args.no_serial_dichotomy:
            serial.calls = 0
            start = time.perf_counter()
            found = serial.dichotomy()
            rows.append({"classifier": name, "method": "adverSCarial-style, dichotomy",
                         "seconds": time.perf_counter() - start, "calls": serial.calls,
                         "rows": serial.calls * adata.n_obs, "flips": found})

    # the MLP scan at 1 and 2 torch threads: with other processes on the cores, torch's
    # threads wait on each other at every operation and one thread can be faster
    sweep = []
    default_threads = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sweep.append((threads, scan(adata, None, f"threads{threads}")["seconds"]))
    torch.set_num_threads(default_threads)

    print("\n| classifier | search | seconds | classifier calls | rows classified | flips |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(fmt(row))
    for name in ("MLP", "random forest"):
        ours = next(r for r in rows if r["classifier"] == name and r["method"] ==
                    "scadv, exhaustive")
        theirs = next(r for r in rows if r["classifier"] == name and r["method"] ==
                      "adverSCarial-style, exhaustive")
        print(f"{name}: scadv's exhaustive scan is {theirs['seconds'] / ours['seconds']:.0f}× "
              "faster than adverSCarial-style evaluation of the same search (est.)")
    print("MLP exhaustive scan by torch threads: "
          + ", ".join(f"{t} thread{'s' if t > 1 else ''}: {sec:.1f} s" for t, sec in sweep))
    print(f"load average {os.getloadavg()[0]:.2f} at the end (2 cores: above 2 means the "
          "timings were taken under CPU contention)")


if __name__ == "__main__":
    main()
