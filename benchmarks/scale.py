"""Atlas scale: time and peak memory of each scadv step on a backed atlas, one process per step.

For every size asked for, a realistic synthetic atlas (``benchmarks/atlas.py``: PBMC3k cells
resampled, all 32,738 genes, ~850 non-zeros per cell) is written to disk once; then each step
runs in its OWN Python process on the file read backed (``X`` stays on disk):

    prepare → train_classifier → predict (all cells) → pgd at 3 ε (test split)
    → data-respecting pgd (all cells) → meta_detect → single_gene (one cluster)
    → predict 10,000 new raw cells with the model read from the results file → write_h5ad

The results of a step (``obs``, ``obsm``, ``uns``) are kept in a side file that the next
step attaches to the backed atlas, so no step ever holds the count matrix in memory. Stored
perturbations are loaded only by the steps that read them (``meta_detect`` scores them,
``write_h5ad`` saves them): the three z-space PGD results of a 1M-cell atlas's 200,000 test
cells are 4.8 GB of dense float32 changes by themselves (L∞ PGD moves every model gene), which
a single session running every step would hold on top of each step's peak. For each
step the script prints the wall time of the scadv call alone, the process's peak resident
memory during the call (``VmHWM``, reset just before it: what was resident at its start
included — imports, ``obs``, ``uns`` — the loading before it not) and that peak minus the
process's memory just before the call::

    python benchmarks/scale.py --cells 10000 50000 --workdir /tmp/scadv_scale
    python benchmarks/scale.py --cells 200000 --workdir /tmp/scadv_scale --max-epochs 10

Times are only comparable between sizes run on the same quiet machine (the ratio per step
between sizes shows whether a step is linear in the number of cells); memory does not depend
on the machine's load. Results go to ``benchmarks/results/scale_<cells>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STEPS = ("prepare", "train_classifier", "predict", "pgd_test", "pgd_all", "meta_detect",
         "single_gene", "predict_new", "write_h5ad")
#: Cells of the separate "new lab" file that ``predict_new`` classifies with the stored model.
NEW_CELLS = 10_000


def _reset_peak() -> None:
    """Start the process's peak resident memory (VmHWM) afresh, so that the peak reported is
    the step's own and not the loading's before it (Linux; ignored elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_gib() -> float:
    """Peak resident memory since the last :func:`_reset_peak` (else since the start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _current_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


#: Steps that read earlier perturbations (meta_detect scores and evaluates every one of the
#: classifier's; write_h5ad saves them). The other steps' processes do not load them.
READS_PERTURBATIONS = ("meta_detect", "write_h5ad")


def _attach(adata: Any, state: Path, *, perturbations: bool) -> None:
    """Attach the side file's obs, obsm and uns to the backed atlas; without the stored
    perturbations (their registry entries and payloads) unless ``perturbations``."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(state, "r") as f:
        adata.obs = read_elem(f["obs"])
        uns = {k: read_elem(v) for k, v in f["uns"].items() if k != "scadv"}
        registered: set[str] = set()
        if "scadv" in f["uns"]:
            group = f["uns"]["scadv"]
            registered = set(group["perturbations"]) if "perturbations" in group else set()
            uns["scadv"] = {k: read_elem(v) for k, v in group.items()
                            if perturbations or k != "perturbations"}
        adata.uns = uns
        for k in f["obsm"]:
            if perturbations or k not in registered:
                adata.obsm[k] = read_elem(f["obsm"][k])


def _save(adata: Any, state: Path) -> None:
    """Write the step's obs, obsm and uns into the side file; perturbations already there are
    kept as they are (a step that did not load them cannot have changed them)."""
    import h5py
    from anndata import AnnData
    from anndata.io import write_elem

    if not state.exists():
        AnnData(obs=adata.obs, obsm=dict(adata.obsm), uns=adata.uns).write_h5ad(state)
        return
    with h5py.File(state, "a") as f:
        del f["obs"]
        write_elem(f, "obs", adata.obs)
        for k, v in adata.obsm.items():
            if k in f["obsm"]:
                del f["obsm"][k]
            write_elem(f["obsm"], k, v)
        for k, v in adata.uns.items():
            if k != "scadv":
                if k in f["uns"]:
                    del f["uns"][k]
                write_elem(f["uns"], k, v)
        if "scadv" not in f["uns"]:
            write_elem(f["uns"], "scadv", adata.uns.get("scadv", {}))
            return
        group = f["uns"]["scadv"]
        for k, v in adata.uns.get("scadv", {}).items():
            if k == "perturbations" and k in group:
                for name, entry in v.items():
                    if name not in group[k]:
                        write_elem(group[k], name, entry)
                continue
            if k in group:
                del group[k]
            write_elem(group, k, v)


def _run_step(step: str, atlas: Path, state: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """One step in this process: attach the side file to the backed atlas, run, save it."""
    import anndata as ad
    import numpy as np

    import scadv

    adata = ad.read_h5ad(atlas, backed="r")
    if state.exists():
        _attach(adata, state, perturbations=step in READS_PERTURBATIONS)
    before = _current_gib()
    _reset_peak()
    start = time.perf_counter()
    if step == "prepare":
        scadv.pp.prepare(adata, progress=False)
    elif step == "train_classifier":
        scadv.tl.train_classifier(adata, "cell_type", max_epochs=opts["max_epochs"],
                                  progress=False)
    elif step == "predict":
        scadv.tl.predict(adata, progress=False)
    elif step == "pgd_test":
        scadv.tl.pgd(adata, eps=(0.05, 0.1, 0.15), key_added="pgd_test", progress=False)
    elif step == "pgd_all":
        scadv.tl.pgd(adata, eps=0.5, cells="all", keep_zeros=True, key_added="pgd_all",
                     progress=False)
    elif step == "meta_detect":
        scadv.tl.meta_detect(adata, progress=False)
    elif step == "single_gene":
        biggest = str(adata.obs["cell_type"].value_counts().index[0])
        scadv.tl.single_gene(adata, cluster_key="cell_type", target=[biggest], progress=False)
    elif step == "predict_new":
        new = ad.read_h5ad(opts["new"])
        before = _current_gib()
        _reset_peak()
        start = time.perf_counter()
        scadv.tl.predict(new, source=state, progress=False)
    elif step == "write_h5ad":
        out = state.with_name(state.name.replace("state_", "final_"))
        adata.write_h5ad(out)
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(step)
    seconds = time.perf_counter() - start
    peak = _rss_gib()
    extra: dict[str, Any] = {}
    if step == "write_h5ad":
        extra["file_gib"] = out.stat().st_size / 2**30
        extra["input_file_gib"] = atlas.stat().st_size / 2**30
    elif step != "predict_new":
        _save(adata, state)
    if step == "train_classifier":
        extra["test_accuracy"] = float(adata.uns["scadv"]["classifier"]["metrics"]["test"]
                                       ["accuracy"])
    for col in adata.obs:
        if step.startswith("pgd") and col.startswith(f"scadv_{step}_") and \
                col.endswith("_flipped"):
            flipped = adata.obs[col].dropna().astype(bool)
            extra[col.removeprefix("scadv_").removesuffix("_flipped")] = round(
                float(np.mean(flipped)), 3)
            extra["cells_attacked"] = len(flipped)
    return {"step": step, "seconds": seconds, "peak_rss_gib": peak,
            "peak_above_start_gib": peak - before, **extra}


def _chain(n_cells: int, workdir: Path, opts: dict[str, Any], steps: list[str]) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from atlas import write_atlas

    workdir.mkdir(parents=True, exist_ok=True)
    atlas = workdir / f"atlas_{n_cells}.h5ad"
    if not atlas.exists():
        start = time.perf_counter()
        write_atlas(n_cells, atlas)
        print(f"atlas of {n_cells} cells written in {time.perf_counter() - start:.0f} s "
              f"({atlas.stat().st_size / 2**30:.2f} GiB)", flush=True)
    new = workdir / f"new_{NEW_CELLS}.h5ad"
    if "predict_new" in steps and not new.exists():
        write_atlas(NEW_CELLS, new, seed=1)
    state = workdir / f"state_{n_cells}.h5ad"
    if steps[0] == STEPS[0] and state.exists():
        state.unlink()
    rows = []
    for step in steps:
        cmd = [sys.executable, __file__, "--step", step, "--atlas", str(atlas), "--state",
               str(state), "--max-epochs", str(opts["max_epochs"]), "--new", str(new)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            rows.append({"step": step, "error": done.stderr.strip().splitlines()[-1:]})
            break
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        extra = {k: v for k, v in row.items()
                 if k not in ("step", "seconds", "peak_rss_gib", "peak_above_start_gib")}
        print(f"{n_cells:>9,} {step:<17} {row['seconds']:9.1f} s  peak {row['peak_rss_gib']:6.2f}"
              f" GiB  (+{row['peak_above_start_gib']:.2f})  {extra or ''}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scadv_scale"))
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--atlas", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--new", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    opts = {"max_epochs": args.max_epochs, "new": args.new}
    if args.step:
        print(json.dumps(_run_step(args.step, args.atlas, args.state, opts)))
        return
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    for n in args.cells:
        rows = _chain(n, args.workdir, opts, args.steps)
        meta = {"cells": n, "max_epochs": args.max_epochs, "cpus": os.cpu_count(),
                "load_average": os.getloadavg(), "steps": rows}
        (out / f"scale_{n}.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
