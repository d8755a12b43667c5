"""Command line: ``scadv demo`` and ``scadv audit``.

Both run the whole chain (prepare → train_classifier → pgd), save the AnnData and figures into
an output folder, and print a short summary.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import matplotlib

from . import _keys as K
from ._errors import ScadvInputError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scadv`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    matplotlib.use("Agg")  # files only; never open a window
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if args.command == "demo":
            from .datasets import pbmc68k_reduced

            adata, name, label_key = pbmc68k_reduced(), "pbmc68k_reduced", "bulk_labels"
        else:
            path = Path(args.input)
            if not path.exists():
                raise ScadvInputError(f"{path} does not exist.")
            adata, name, label_key = ad.read_h5ad(path), path.stem, args.label_key
        summary = run_chain(adata, label_key=label_key, out=Path(args.out), name=name,
                            eps=tuple(args.eps), seed=args.seed, cells=args.cells)
    except ScadvInputError as err:
        print(f"scadv: error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


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

    demo = sub.add_parser("demo", help="run the whole chain on scanpy's bundled pbmc68k_reduced")
    common(demo, "scadv_demo")
    audit = sub.add_parser("audit", help="run the whole chain on your .h5ad")
    audit.add_argument("input", help="an .h5ad with raw counts, log-normalised or scaled data")
    audit.add_argument("--label-key", required=True, help="obs column with cell types/clusters")
    common(audit, "scadv_audit")
    return parser


def run_chain(adata: ad.AnnData, *, label_key: str, out: Path, name: str,
              eps: tuple[float, ...] = (0.05, 0.1, 0.15), seed: int = 42,
              cells: str = "test") -> str:
    """prepare → train_classifier → pgd → figures → ``.h5ad``; returns a printable summary."""
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc

    from . import pl, pp, tl
    from .pl._utils import root_figure

    start = time.perf_counter()
    if label_key not in adata.obs:
        raise ScadvInputError(
            f"label key {label_key!r} not found in obs (columns: {list(adata.obs.columns)})."
        )
    out.mkdir(parents=True, exist_ok=True)
    sc.settings.verbosity = 1
    pp.prepare(adata)
    tl.train_classifier(adata, label_key, seed=seed, progress=False)
    tl.pgd(adata, eps=eps, seed=seed, cells=cells, progress=False)
    model = adata.uns[K.UNS][K.DEFAULT_MODEL]
    attack = adata.uns[K.UNS]["pgd"]

    flip_png = out / "flip_rate.png"
    ax = pl.flip_rate(adata, show=False)
    flip_fig = root_figure(ax)
    flip_fig.savefig(flip_png, dpi=150, bbox_inches="tight")
    plt.close(flip_fig)

    umap_png = out / "umap_flipped.png"
    if "X_umap" not in adata.obsm:
        # a map of the cells as the classifier sees them: its 64-d embedding
        sc.pp.neighbors(adata, use_rep=K.embedding(K.DEFAULT_MODEL), random_state=seed)
        sc.tl.umap(adata, random_state=seed)
    middle = K.attack_flipped_to("pgd", eps[len(eps) // 2])
    fig = sc.pl.umap(adata, color=[label_key, K.pred(K.DEFAULT_MODEL), middle], show=False,
                     return_fig=True, wspace=0.45)
    fig.savefig(umap_png, dpi=150, bbox_inches="tight")
    plt.close(fig)

    h5ad = out / f"scadv_{name}.h5ad"
    adata.write_h5ad(h5ad)
    test = model["metrics"]["test"]
    lines = [
        f"scadv audit of {name}: {adata.n_obs} cells × {adata.n_vars} model genes, "
        f"{len(model['classes'])} classes from obs[{label_key!r}]",
        f"  clean test accuracy {test['accuracy']:.3f} (balanced {test['balanced_accuracy']:.3f}) "
        f"on {test['n_cells']} held-out cells",
        f"  L∞ PGD ({int(attack['steps'])} steps) on {int(attack['n_cells'])} {cells} cells:",
    ]
    for e, flip, robust in zip(np.atleast_1d(attack["eps"]), np.atleast_1d(attack["flip_rate"]),
                               np.atleast_1d(attack["robust_accuracy"]), strict=True):
        lines.append(f"    ε={K.format_eps(e):<5} flip rate {flip:.3f}"
                     f"   robust accuracy {robust:.3f}")
    lines += [
        f"  wrote {h5ad}",
        f"        {flip_png}",
        f"        {umap_png}",
        f"  ({time.perf_counter() - start:.1f} s)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
