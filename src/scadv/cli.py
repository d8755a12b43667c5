"""Command line: ``scadv demo``, ``scadv audit`` and ``scadv app``.

``demo`` and ``audit`` run the chain (prepare → train_classifier → pgd, and on request the
data-respecting attack, the meta-detector and a single-gene scan), save the AnnData, the
figures and one self-contained HTML report into an output folder, and print a short summary.
``app`` starts the interactive web app.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import matplotlib

from . import _keys as K
from ._errors import ScadvInputError

#: Fewest labelled cells a class needs to be split into train / validation / test.
MIN_CELLS_FLOOR = 3


@dataclass
class Options:
    """What ``demo`` / ``audit`` run (the command-line flags)."""

    eps: tuple[float, ...] = (0.05, 0.1, 0.15)
    seed: int = 42
    cells: str = "test"
    realistic: bool = False
    realistic_eps: tuple[float, ...] = (0.5, 1.0)
    detector: bool = False
    single_gene: bool = False
    report: bool = True
    min_cells: int | None = None
    notes: list[str] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scadv`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if args.command == "app":
            from .app import serve

            serve(args.input, port=args.port, host=args.host, label_key=args.label_key,
                  open_browser=not args.no_browser)
            return 0
        matplotlib.use("Agg")  # files only; never open a window
        opts = Options(eps=tuple(args.eps), seed=args.seed, cells=args.cells,
                       realistic=args.realistic, realistic_eps=tuple(args.realistic_eps),
                       detector=args.detector, single_gene=args.single_gene,
                       report=not args.no_report,
                       min_cells=getattr(args, "min_cells", None))
        if args.command == "demo":
            from . import _demo

            adata, name, label_key = _demo.load(), _demo.NAME, _demo.LABEL_KEY
            labels = None
        else:
            adata, name = read(Path(args.input)), Path(args.input).stem
            label_key, labels = args.label_key, args.labels
        summary = run_chain(adata, label_key=label_key, labels=labels, out=Path(args.out),
                            name=name, options=opts)
    except ScadvInputError as err:
        print(f"scadv: error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def read(path: Path) -> ad.AnnData:
    """Read an ``.h5ad``, or say clearly why it cannot be read."""
    if not path.exists():
        raise ScadvInputError(f"{path} does not exist.")
    if path.is_dir():
        raise ScadvInputError(f"{path} is a folder; pass an .h5ad file (a 10x folder: read it "
                              "with scanpy.read_10x_mtx and save it with adata.write_h5ad).")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise ScadvInputError(
            f"{path} is not an .h5ad file (not HDF5). scadv reads AnnData .h5ad files: convert "
            "yours in Python, e.g. scanpy.read_10x_h5 / read_10x_mtx / read_csv, then "
            "adata.write_h5ad('data.h5ad').")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # anndata raises many types for a damaged or foreign HDF5 file
        raise ScadvInputError(f"{path} is an HDF5 file but not a readable AnnData "
                              f"({type(err).__name__}: {err}).") from err


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="scadv", description="Adversarial robustness audits of single-cell classifiers.")
    parser.add_argument("--version", action="version", version=f"scadv {__version__}")
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", default=out, help=f"output folder (default: {out})")
        p.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.15],
                       help="L∞ PGD budgets in z-score units (default: 0.05 0.1 0.15)")
        p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
        p.add_argument("--cells", choices=["test", "all"], default="test",
                       help="cells to attack (default: the held-out test split)")
        p.add_argument("--realistic", action="store_true",
                       help="also run the data-respecting PGD: unexpressed genes stay at zero, "
                            "every gene stays in its observed range")
        p.add_argument("--realistic-eps", type=float, nargs="+", default=[0.5, 1.0],
                       help="budgets of the data-respecting PGD (default: 0.5 1.0)")
        p.add_argument("--detector", action="store_true",
                       help="train and evaluate the meta-detector of manipulated cells")
        p.add_argument("--single-gene", action="store_true",
                       help="scan every model gene of every class for label flips (perc1/perc99)")
        p.add_argument("--no-report", action="store_true", help="skip the HTML report")

    demo = sub.add_parser("demo", help="run the chain on scanpy's bundled pbmc68k_reduced")
    common(demo, "scadv_demo")
    audit = sub.add_parser("audit", help="run the chain on your .h5ad")
    audit.add_argument("input", help="an .h5ad with raw counts, log-normalised or scaled data")
    which = audit.add_mutually_exclusive_group(required=True)
    which.add_argument("--label-key", help="obs column with cell types/clusters")
    which.add_argument("--labels", choices=["kmeans", "leiden"],
                       help="no labels: train on pseudo-labels (kmeans: MiniBatchKMeans, 10 "
                            "clusters on 50 PCs, as the PBMC3k study; leiden: Leiden clusters)")
    audit.add_argument("--min-cells", type=int, default=None, metavar="N",
                       help="leave classes with fewer than N labelled cells out of training "
                            "(their cells are still predicted and attacked)")
    common(audit, "scadv_audit")
    app = sub.add_parser("app", help="interactive web app: pick a cell, attack it, see the "
                                     "probabilities and the detector's verdict")
    app.add_argument("input", nargs="?", default=None,
                     help="a scadv .h5ad (default: the bundled pbmc68k_reduced, trained on "
                          "start); never written to")
    app.add_argument("--label-key", default=None,
                     help="label column to train on when the file has no scadv classifier")
    app.add_argument("--port", type=int, default=8050, help="port (default: 8050)")
    app.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    app.add_argument("--no-browser", action="store_true", help="do not open a browser")
    return parser


def _filter_classes(adata: ad.AnnData, label_key: str, opts: Options) -> str:
    """The label column to train on: ``label_key``, or a copy without the small classes
    when ``--min-cells`` asks for it. Without it, small classes are an error with the flag
    that fixes it."""
    import pandas as pd

    labels = adata.obs[label_key]
    counts = labels.dropna().astype(str).value_counts()
    floor = max(opts.min_cells or 0, MIN_CELLS_FLOOR)
    small = {str(c): int(n) for c, n in counts.items() if n < floor}
    if not small:
        return label_key
    if opts.min_cells is None:
        raise ScadvInputError(
            f"classes of obs[{label_key!r}] with fewer than {MIN_CELLS_FLOOR} labelled cells "
            f"cannot be split into train / validation / test: {small}. Rerun with "
            f"--min-cells {MIN_CELLS_FLOOR} (or higher) to leave them out of training; their "
            "cells are still predicted and attacked.")
    column = (f"{label_key}_min{opts.min_cells}" if label_key.startswith(K.PREFIX)
              else f"{K.PREFIX}_{label_key}")
    kept = labels.astype(str).where(~labels.astype(str).isin(list(small)) & labels.notna())
    adata.obs[column] = pd.Categorical(kept)
    opts.notes.append(
        f"--min-cells {opts.min_cells}: classes {small} of obs[{label_key!r}] were left out of "
        f"training (their cells are unlabelled in obs[{column!r}]).")
    return column


def _umap(adata: ad.AnnData, seed: int) -> None:
    """A UMAP of the model input (kept if the data already has one)."""
    import numpy as np
    import scanpy as sc

    from . import _recipe as R

    if "X_umap" in adata.obsm:
        return
    x = R.model_input(adata, adata.uns[K.UNS][K.PREPARE]).x
    tmp = ad.AnnData(X=np.asarray(x, dtype=np.float32))
    sc.pp.pca(tmp, n_comps=min(50, tmp.n_vars - 1, tmp.n_obs - 1), random_state=seed)
    sc.pp.neighbors(tmp, random_state=seed)
    sc.tl.umap(tmp, random_state=seed)
    adata.obsm["X_umap"] = tmp.obsm["X_umap"]


def run_chain(adata: ad.AnnData, *, label_key: str | None, out: Path, name: str,
              labels: str | None = None, options: Options | None = None) -> str:
    """prepare → (pseudo-labels) → train_classifier → pgd (→ data-respecting pgd →
    meta-detector → single-gene scan) → figures, report, ``.h5ad``; returns a printable
    summary."""
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc

    from . import pl, pp, tl
    from .pl._utils import root_figure

    opts = options or Options()
    start = time.perf_counter()
    if labels is None and (label_key is None or label_key not in adata.obs):
        raise ScadvInputError(
            f"label key {label_key!r} not found in obs (columns: {list(adata.obs.columns)}). "
            "Pass --label-key COLUMN, or --labels kmeans to train on pseudo-labels.")
    out.mkdir(parents=True, exist_ok=True)
    sc.settings.verbosity = 1
    pp.prepare(adata)
    if labels is not None:
        tl.pseudo_labels(adata, method=labels, seed=opts.seed)  # type: ignore[arg-type]
        label_key = K.PSEUDO_LABEL
        rec = adata.uns[K.UNS][K.PSEUDO_LABEL]
        opts.notes.append(f"No labels given: trained on pseudo-labels ({rec['description']}, "
                          f"--labels {labels}); accuracy and flip rates are about these "
                          "clusters, not cell types.")
    if label_key is None:  # pragma: no cover - excluded above
        raise ScadvInputError("pass --label-key or --labels.")
    train_key = _filter_classes(adata, label_key, opts)
    tl.train_classifier(adata, train_key, seed=opts.seed, progress=False)
    tl.pgd(adata, eps=opts.eps, seed=opts.seed, cells=opts.cells, progress=False)
    if opts.realistic:
        tl.pgd(adata, eps=opts.realistic_eps, keep_zeros=True, clip="observed",
               seed=opts.seed, cells=opts.cells, key_added="pgd_realistic", progress=False)
    if opts.detector:
        tl.meta_detect(adata, seed=opts.seed, progress=False)
    if opts.single_gene:
        classes = [str(c) for c in adata.uns[K.UNS][K.DEFAULT_MODEL]["classes"]]
        tl.single_gene(adata, cluster_key=train_key, target=classes, progress=False)
    model = adata.uns[K.UNS][K.DEFAULT_MODEL]

    flip_png = out / "flip_rate.png"
    ax = pl.flip_rate(adata, show=False)
    flip_fig = root_figure(ax)
    flip_fig.savefig(flip_png, dpi=150)
    plt.close(flip_fig)

    umap_png = out / "umap_flipped.png"
    _umap(adata, opts.seed)
    middle = K.attack_flipped_to("pgd", opts.eps[len(opts.eps) // 2])
    fig = sc.pl.umap(adata, color=[train_key, K.pred(K.DEFAULT_MODEL), middle], show=False,
                     return_fig=True, wspace=0.45)
    fig.savefig(umap_png, dpi=150, bbox_inches="tight")
    plt.close(fig)

    report_path = None
    if opts.report:
        report_path = pl.report(adata, title=f"scadv audit of {name}", notes=opts.notes,
                                save=out / "report.html")
    h5ad = out / f"scadv_{name}.h5ad"
    adata.write_h5ad(h5ad)
    test = model["metrics"]["test"]
    lines = [
        f"scadv audit of {name}: {adata.n_obs} cells × {len(model['genes'])} model genes, "
        f"{len(model['classes'])} classes from obs[{train_key!r}]",
        *[f"  note: {n}" for n in opts.notes],
        f"  clean test accuracy {test['accuracy']:.3f} (balanced {test['balanced_accuracy']:.3f}) "
        f"on {test['n_cells']} held-out cells",
    ]
    for key in ("pgd", "pgd_realistic"):
        rec = adata.uns[K.UNS].get(key)
        if rec is None:
            continue
        kind = "L∞ PGD" if key == "pgd" else "data-respecting L∞ PGD"
        lines.append(f"  {kind} ({int(rec['steps'])} steps) on {int(rec['n_cells'])} "
                     f"{opts.cells} cells:")
        for e, flip, robust in zip(np.atleast_1d(rec["eps"]), np.atleast_1d(rec["flip_rate"]),
                                   np.atleast_1d(rec["robust_accuracy"]), strict=True):
            lines.append(f"    ε={K.format_eps(e):<5} flip rate {flip:.3f}"
                         f"   robust accuracy {robust:.3f}")
    if opts.detector:
        det = adata.uns[K.UNS][K.DEFAULT_DETECTOR]
        lines.append(f"  meta-detector (threshold {float(det['threshold']):.3f}), test cells:")
        for layer, ev in det["evaluation"].items():
            d = ev.get("detector")
            if isinstance(d, dict) and "auroc" in d and str(ev.get("kind")) == "adversarial":
                lines.append(f"    {ev.get('label', layer):<28} AUROC {float(d['auroc']):.3f}")
    lines += [f"  wrote {h5ad}", f"        {flip_png}", f"        {umap_png}"]
    if report_path is not None:
        lines.append(f"        {report_path}")
    lines.append(f"  ({time.perf_counter() - start:.1f} s)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
