"""What the app does, without the web page: load data, attack one cell, evaluate, save.

Everything here goes through scadv's public functions (``scadv.tl.pgd(..., copy=True)``,
``scadv.tl.meta_score(..., copy=True)``) on copies, so the app never changes the data it
was given, and keeps working when scadv changes where it stores results. The one place that
reads an attack's perturbed cells back is :func:`perturbed_rows`.

Attacks are registered in :data:`ATTACKS` (name → :class:`AttackSpec`): the page builds its
controls from each spec's :class:`Option` list, so an attack added later (count-space,
gene-level) is one more entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys as K
from .._errors import ScadvInputError

#: ``key_added`` of the app's attack runs (on copies only).
RUN_KEY = "app"


@dataclass
class Option:
    """One control of an attack: ``kind`` is ``'number'``, ``'choice'`` or ``'check'``."""

    name: str
    label: str
    kind: str
    default: Any
    choices: Sequence[str] = ()


@dataclass
class CellResult:
    """One attacked cell: probabilities before / after, the detector's verdict, genes moved."""

    cell: str
    attack: str
    classes: list[str]
    proba_before: np.ndarray
    proba_after: np.ndarray
    genes: pd.DataFrame  # gene, before, after, change (largest |change| first)
    n_genes_moved: int
    detector: dict[str, Any] | None = None
    truth: str | None = None

    @property
    def pred_before(self) -> str:
        return self.classes[int(np.argmax(self.proba_before))]

    @property
    def pred_after(self) -> str:
        return self.classes[int(np.argmax(self.proba_after))]

    @property
    def flipped(self) -> bool:
        return self.pred_before != self.pred_after

    def verdict(self) -> str:
        """One line a person reads: did the prediction change, and did the detector see it."""
        head = (f"{self.cell}: {self.pred_before} → {self.pred_after} "
                f"({'FLIPPED' if self.flipped else 'unchanged'})")
        if self.detector is None:
            return f"{head}. No detector stored (run scadv.tl.meta_detect to get a verdict)."
        d = self.detector
        word = "FLAGGED as manipulated" if d["flag_after"] else "passed as clean"
        return (f"{head}. Detector {d['key']!r}: attacked cell {word} (score "
                f"{d['score_after']:.3f}, threshold {d['threshold']:.3f}; clean cell "
                f"{d['score_before']:.3f}).")


@dataclass
class AttackSpec:
    label: str
    options: list[Option]
    run: Callable[[Session, str, Mapping[str, Any]], CellResult]


ATTACKS: dict[str, AttackSpec] = {}


def register(name: str, spec: AttackSpec) -> None:
    """Offer another attack in the app (its controls come from ``spec.options``)."""
    ATTACKS[name] = spec


@dataclass
class Session:
    """The data the app shows (never written back to its file) and what it knows of it."""

    adata: AnnData
    name: str
    source: Path | None = None
    model: str = K.DEFAULT_MODEL
    evaluation: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def record(self) -> Mapping[str, Any]:
        rec = self.adata.uns.get(K.UNS, {}).get(self.model)
        if not isinstance(rec, Mapping):
            raise ScadvInputError(f"no scadv classifier {self.model!r} in {self.name}.")
        return rec

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in np.asarray(self.record["classes"])]

    @property
    def label_key(self) -> str:
        return str(self.record.get("label_key", ""))

    @property
    def detector_key(self) -> str | None:
        ns = self.adata.uns.get(K.UNS, {})
        if not isinstance(ns, Mapping):
            return None
        keys = [k for k, r in ns.items() if isinstance(r, Mapping) and "threshold" in r
                and "evaluation" in r and str(r.get("model", "")) == self.model]
        return (K.DEFAULT_DETECTOR if K.DEFAULT_DETECTOR in keys else keys[0]) if keys else None

    def color_columns(self) -> list[str]:
        """obs columns a UMAP can be coloured by: the labels first, then scadv's columns,
        then the other categorical and numeric ones."""
        obs = self.adata.obs
        first = [c for c in (self.label_key, K.pred(self.model)) if c in obs]
        scadv_cols = [c for c in obs if c.startswith(K.PREFIX) and c not in first]
        other = [c for c in obs if c not in first and c not in scadv_cols
                 and (isinstance(obs[c].dtype, pd.CategoricalDtype)
                      or pd.api.types.is_numeric_dtype(obs[c]))]
        return first + scadv_cols + other

    def test_cells(self) -> list[str]:
        split = K.split(self.model)
        if split in self.adata.obs:
            mask = (self.adata.obs[split].astype(str) == K.SPLIT_TEST).to_numpy()
            if mask.any():
                return [str(c) for c in self.adata.obs_names[mask]]
        return [str(c) for c in self.adata.obs_names]

    def check_cell(self, cell: str | None) -> str:
        if not cell or cell not in self.adata.obs_names:
            raise ScadvInputError(f"no cell named {cell!r}; click a cell on the UMAP or type "
                                  "one of the cell names.")
        return str(cell)

    def attack(self, name: str, cell: str | None, options: Mapping[str, Any]) -> CellResult:
        if name not in ATTACKS:
            raise ScadvInputError(f"unknown attack {name!r}; choose from {list(ATTACKS)}.")
        return ATTACKS[name].run(self, self.check_cell(cell), options)

    def evaluate(self, eps: float, options: Mapping[str, Any]) -> pd.DataFrame:
        """PGD on every test cell (on a copy): flip rate per class and, with a detector, the
        share of flipped cells it flags and of clean cells it flags."""
        import scadv

        res = returned(scadv.tl.pgd(self.adata, cells=self.test_cells(), key_added=RUN_KEY,
                                    progress=False, copy=True,
                                    **_pgd_kwargs(eps, options, self)), "scadv.tl.pgd")
        layer = K.attack_layer(RUN_KEY, eps)
        pred = res.obs[K.attack_pred(RUN_KEY, eps)]
        attacked = pred.notna().to_numpy()
        clean = res.obs[K.pred(self.model)].astype(str).to_numpy()
        flipped = attacked & (pred.astype(str).to_numpy() != clean)
        group = clean
        if self.label_key in res.obs:
            truth = res.obs[self.label_key]
            group = np.where(truth.notna(), truth.astype(str), clean)
        df = pd.DataFrame({"class": group[attacked], "flipped": flipped[attacked]})
        table = df.groupby("class", observed=True).agg(
            cells=("flipped", "size"), flip_rate=("flipped", "mean")).reset_index()
        total = pd.DataFrame({"class": ["all test cells"], "cells": [int(attacked.sum())],
                              "flip_rate": [float(flipped[attacked].mean())]})
        table = pd.concat([table, total], ignore_index=True)
        det = self.detector_key
        if det is not None:
            scored = returned(scadv.tl.meta_score(res, key=det, layers=[layer],
                                                  progress=False, copy=True),
                              "scadv.tl.meta_score")
            flag_adv = scored.obs[K.meta_flag(det, layer)].astype(str).to_numpy() == "True"
            flag_clean = scored.obs[K.meta_flag(det)].astype(str).to_numpy() == "True"
            rows = list(df["class"])
            adv_rate = pd.Series(flag_adv[attacked][df["flipped"].to_numpy()],
                                 index=np.asarray(rows)[df["flipped"].to_numpy()])
            per = adv_rate.groupby(level=0).mean()
            table["flipped flagged"] = [float(per.get(c, np.nan)) for c in table["class"]]
            table.loc[table.index[-1], "flipped flagged"] = (
                float(flag_adv[flipped].mean()) if flipped.any() else np.nan)
            table["clean flagged"] = np.nan
            table.loc[table.index[-1], "clean flagged"] = float(flag_clean[attacked].mean())
        self.evaluation = table.round(3)
        return self.evaluation

    def save(self, path: str | Path) -> Path:
        """Write the session's AnnData to a NEW file (never over an existing one, never over
        the file the app was started on)."""
        out = Path(str(path)).expanduser()
        if not str(path).strip():
            raise ScadvInputError("type a file name to save to.")
        if out.suffix != ".h5ad":
            raise ScadvInputError(f"{out} must end in .h5ad.")
        if out.exists():
            raise ScadvInputError(f"{out} exists; the app never overwrites a file. Choose a "
                                  "new name.")
        if self.source is not None and out.resolve() == self.source.resolve():
            raise ScadvInputError("that is the file the app was started on; choose a new name.")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.adata.write_h5ad(out)
        return out


def perturbed_rows(adata: AnnData, name: str, cells: Sequence[str]) -> np.ndarray:
    """Model-space rows of ``cells`` in perturbation ``name`` (an attack's perturbation)."""
    import scadv

    return np.asarray(scadv.get.perturbed(adata, name, cells=list(cells)), dtype=np.float32)


def _pgd_kwargs(eps: float, options: Mapping[str, Any], session: Session) -> dict[str, Any]:
    target = options.get("target") or None
    if target == "(away from its prediction)":
        target = None
    return {
        "eps": float(eps),
        "steps": int(options.get("steps", 10)),
        "norm": str(options.get("norm", "linf")),
        "keep_zeros": bool(options.get("keep_zeros", False)),
        "clip": "observed" if options.get("clip_observed") else None,
        "random_start": bool(options.get("random_start", False)),
        "target": target,
        "model": session.model,
        "seed": int(options.get("seed", 42)),
    }


def _run_pgd(session: Session, cell: str, options: Mapping[str, Any]) -> CellResult:
    import scadv

    from .. import _recipe as R

    eps = float(options.get("eps", 0.1))
    if not eps > 0:
        raise ScadvInputError(f"ε must be positive, got {eps}.")
    one = session.adata[[cell]].copy()
    res = returned(scadv.tl.pgd(one, cells="all", key_added=RUN_KEY, progress=False,
                                copy=True, **_pgd_kwargs(eps, options, session)),
                   "scadv.tl.pgd")
    layer = K.attack_layer(RUN_KEY, eps)
    x0 = R.model_input(one, session.record["prepare"]).x
    x1 = perturbed_rows(res, layer, [cell])
    return attacked_cell(session, cell, one, res, layer, x0, x1,
                         attack=f"PGD ε={K.format_eps(eps)}")


def returned(res: AnnData | None, what: str) -> AnnData:
    """The AnnData a scadv function returned with ``copy=True``."""
    if res is None:
        raise RuntimeError(f"{what}(copy=True) returned no AnnData")
    return res


def attacked_cell(session: Session, cell: str, one: AnnData, res: AnnData, name: str,
                  x0: np.ndarray, x1: np.ndarray, *, attack: str) -> CellResult:
    """One attacked cell whose model input went from ``x0`` to ``x1`` (the perturbation
    ``name`` of ``res``, a copy of the one-cell AnnData ``one``): its probabilities before and
    after, the genes that moved (largest change first) and the stored detector's verdict."""
    import scadv

    from .. import _device as D
    from .. import _model as M

    rec = session.record
    cpu = D.resolve("cpu")
    _, logits = M.infer(M.from_record(rec, cpu), np.vstack([x0, x1]), device=cpu)
    proba = M.softmax(logits)
    genes = np.asarray(rec["genes"]).astype(str)
    change = (x1[0] - x0[0]).astype(np.float64)
    order = np.argsort(-np.abs(change), kind="stable")
    moved = np.abs(change) > 1e-6
    table = pd.DataFrame({"gene": genes[order], "before": x0[0][order],
                          "after": x1[0][order], "change": change[order]})
    detector = None
    det = session.detector_key
    if det is not None:
        scored = returned(scadv.tl.meta_score(res, key=det, layers=[name], progress=False,
                                              copy=True), "scadv.tl.meta_score")
        detector = {
            "key": det, "threshold": float(session.adata.uns[K.UNS][det]["threshold"]),
            "score_before": float(scored.obs[K.meta_score(det)].iloc[0]),
            "score_after": float(scored.obs[K.meta_score(det, name)].iloc[0]),
            "flag_after": str(scored.obs[K.meta_flag(det, name)].iloc[0]) == "True",
        }
    truth = None
    if session.label_key in one.obs and one.obs[session.label_key].notna().iloc[0]:
        truth = str(one.obs[session.label_key].iloc[0])
    return CellResult(cell=cell, attack=attack, classes=session.classes,
                      proba_before=proba[0], proba_after=proba[1], genes=table,
                      n_genes_moved=int(moved.sum()), detector=detector, truth=truth)


register("pgd", AttackSpec(
    label="PGD (gradient attack on the model input)",
    options=[
        Option("eps", "budget ε (z-score units)", "number", 0.5),
        Option("steps", "steps", "number", 10),
        Option("norm", "norm", "choice", "linf", ("linf", "l2")),
        Option("keep_zeros", "keep unexpressed genes at zero", "check", False),
        Option("clip_observed", "stay in each gene's observed range", "check", False),
        Option("random_start", "random start", "check", False),
        Option("target", "target class", "choice", "(away from its prediction)", ()),
    ],
    run=_run_pgd,
))


def load(path: str | Path | None, *, label_key: str | None = None,
         quick: bool = False) -> Session:
    """The app's session: a scadv ``.h5ad`` (read, never written), or the bundled demo
    data, prepared and trained on the spot (a classifier, and a meta-detector)."""
    import scadv

    if path is not None:
        from ..cli import read

        p = Path(path)
        adata = read(p)
        name, source = p.name, p
    else:
        from .. import _demo

        adata, name, source = _demo.load(), _demo.NAME, None
        label_key = label_key or _demo.LABEL_KEY
    has_model = isinstance(adata.uns.get(K.UNS, {}).get(K.DEFAULT_MODEL), Mapping)
    if not has_model:
        if not label_key or label_key not in adata.obs:
            raise ScadvInputError(
                f"{name} holds no scadv classifier; pass --label-key COLUMN to train one on "
                f"start (columns: {list(adata.obs.columns)[:20]}).")
        # quick: a short training for tests and first looks (the defaults otherwise)
        scadv.pp.prepare(adata)
        scadv.tl.train_classifier(adata, label_key, progress=False,
                                  max_epochs=20 if quick else 60)
        scadv.tl.meta_detect(adata, progress=False, triplet_epochs=3 if quick else 15,
                             detector_epochs=5 if quick else 30)
    if "X_umap" not in adata.obsm:
        from ..cli import _umap

        _umap(adata, 0)
    return Session(adata=adata, name=name, source=source)
