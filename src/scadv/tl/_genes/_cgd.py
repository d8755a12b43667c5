"""``scadv.tl.cgd``: cluster-based gradient descent, gene by gene, to switch a cluster's label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scanpy.logging as logg
import torch
from anndata import AnnData
from tqdm import tqdm

from ... import _device as D
from ... import _progress as PB
from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from .._attacks import _engine as ENG
from . import _common as G
from . import _engine as E

Order = Literal["screen", "given", "random"]
#: Cells sampled for the screen that orders the genes.
_SCREEN_CELLS = 128
_TINY = 1e-12


def cgd(
    adata: AnnData,
    *,
    cluster_key: str,
    target: str,
    to: str | None = None,
    classifier: Any = None,
    genes: G.Genes = None,
    alpha: float = 0.1,
    eps: float = 0.1,
    scales: Sequence[float] = (1.0, 2.0, 4.0),
    gradient: bool = False,
    order: Order = "screen",
    max_genes: int | None = None,
    stop_at_switch: bool = True,
    clip: Literal["observed"] | None = None,
    layer: str | None = None,
    add_layer: bool = False,
    add_obs: bool = False,
    key_added: str | None = None,
    batch_rows: int = 4096,
    seed: int = 0,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    r"""Cluster-based gradient descent: modify genes one by one until the cluster switches.

    adverSCarial's CGD for black-box classifiers. Genes are visited one at a time; for each,
    every cell of the cluster not yet predicted as the new type ``to`` is probed in both
    directions, :math:`x \pm s\,(\alpha |x| + \varepsilon)` for each step scale :math:`s`
    (finite differences; all probes of all cells in one batched call), and each cell keeps the
    probe that most raises :math:`\log p_\text{to} - \log p_\text{orig}` — the new type's
    probability relative to the original label's — if any raises it. The walk stops when the
    cluster's label (the majority of its cells' labels) is ``to``. adverSCarial keeps the sign
    of one probe with a fixed step; probing both directions at several scales is a line
    search, and the default gene order (``'screen'``) visits first the genes whose best probe
    helps most, estimated in one batched pass over a sample of the cluster's cells.

    ``gradient=True`` (scadv's MLP) uses the true input gradient instead of probes: at each
    step the gene with the largest first-order gain (mean of :math:`|\partial/\partial x_g|
    \cdot (\alpha|x_g| + \varepsilon)` over the cells still to switch) is chosen, each cell
    moves along its gradient's sign, and the step scale is chosen per cell by one batched line
    search.

    Parameters
    ----------
    adata
        The cells, with the classifier's input matrix in ``X`` or ``layers[layer]``.
    cluster_key
        ``obs`` column with the clusters.
    target
        The cluster to switch.
    to
        The label to switch it to; default the class with the highest mean probability over
        the cluster other than its current label.
    classifier
        As in :func:`scadv.tl.single_gene`.
    genes
        Genes that may be modified (names or a boolean mask), in the order visited with
        ``order='given'``; default all.
    alpha, eps
        Relative and absolute step: a probe moves a value by ``α·|x| + ε`` (times a scale).
    scales
        Step scales tried per probe direction (the line search).
    gradient
        Use true gradients (differentiable classifiers: scadv's MLP).
    order
        ``'screen'`` (most helpful genes first), ``'given'`` or ``'random'`` (seeded).
    max_genes
        Visit at most this many genes.
    stop_at_switch
        Stop as soon as the cluster's label is ``to`` (default), else visit every gene.
    clip
        ``'observed'``: keep every value within its gene's observed range over all cells.
    layer
        Attack ``adata.layers[layer]`` instead of ``adata.X``.
    add_layer
        Also write the matrix with the cluster's cells as modified.
    add_obs
        Also write the cluster cells' predictions after the walk.
    key_added
        Name of the result; default ``'cgd'``.
    batch_rows
        Rows (cell variants) per classifier call.
    seed
        Seeds the screen's cell sample and ``order='random'``.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (scadv's MLP).
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes ``adata.uns['scadv'][key_added]`` with:

    ``trajectory``
        A DataFrame, one row per gene visited: ``step``, ``gene``, ``n_up`` / ``n_down``
        (cells moved up / down), ``n_genes_modified`` (genes modified so far), ``frac_to`` and
        ``frac_original`` (fractions of the cluster's cells predicted ``to`` and the original
        label), ``label`` (the cluster's label) and ``score_to`` (mean probability of ``to``).
    ``switched``, ``original_label``, ``to``, ``final_label``, ``n_genes_modified``,
    ``modified_genes``
        The outcome; plus ``mode`` (``'probe'`` / ``'gradient'``), the work done, parameters
        and provenance.

    With ``add_layer``: ``adata.layers['scadv_<key_added>']``. With ``add_obs``:
    ``adata.obs['scadv_<key_added>_pred']``.
    """
    V.options(locals())
    V.name("cluster_key", cluster_key)
    V.name("to", to, allow_none=True)
    V.nonneg("alpha", alpha)
    V.nonneg("eps", eps)
    V.reals("scales", scales, low=0.0, low_open=True)
    V.flag("gradient", gradient)
    V.choice("order", order, ("screen", "given", "random"))
    V.optional_int("max_genes", max_genes)
    V.flag("stop_at_switch", stop_at_switch)
    V.choice("clip", clip, (None, "observed"))
    V.flag("add_layer", add_layer)
    V.flag("add_obs", add_obs)
    start = logg.info("running CGD attack")
    params = P.call_params(locals(), cgd)
    adata = V.start(adata, copy=copy)
    G.check_common(batch_rows=batch_rows, seed=seed)
    scales_a = np.asarray(scales, dtype=np.float32).ravel()
    if not len(scales_a) or not np.all(np.isfinite(scales_a)) or (scales_a <= 0).any():
        raise ScadvInputError(f"scales must be positive numbers, got {scales!r}.")
    if not (alpha >= 0 and eps >= 0 and alpha + eps > 0):
        raise ScadvInputError(f"alpha and eps must be ≥ 0 and not both 0, got {alpha}, {eps}.")
    if order not in ("screen", "given", "random"):
        raise ScadvInputError(f"order must be 'screen', 'given' or 'random', got {order!r}.")
    if clip not in (None, "observed"):
        raise ScadvInputError(f"clip must be None or 'observed', got {clip!r}.")
    if max_genes is not None and int(max_genes) < 1:
        raise ScadvInputError(f"max_genes must be ≥ 1 (or None), got {max_genes}.")
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=layer, device=device,
                action="scadv.tl.cgd")
    if gradient and s.clf._mlp() is None:
        raise ScadvInputError(
            f"gradient=True needs a differentiable classifier (scadv's MLP); {s.clf.describe()} "
            "is a black box to scadv. Use gradient=False (finite-difference probes)."
        )
    mask = G.cluster_mask(s, target)
    idx = G.gene_index(s, genes)
    cols = G.classifier_cols(s, idx)
    live = np.flatnonzero(cols >= 0)
    if not len(live):
        raise ScadvInputError("none of the genes is read by the classifier; nothing can switch "
                              "the cluster.")
    blk = G.block(s, mask)
    ev = G.evaluator(s, blk, batch_rows=batch_rows)
    decided, _ = E.decide_proba(ev.proba)
    orig = int(decided)
    to_idx = _choose_to(s, ev, orig, to)
    lo_hi = None
    if clip == "observed":
        stats = s.x.gene_values()
        cmin = stats.minimum(idx[live])
        cmax = stats.maximum(idx[live])
        lo_hi = (cmin, cmax)
    start_to = float((ev.pred == to_idx).mean())
    start_orig = float((ev.pred == orig).mean())
    rng = G.rng_for(seed, "cgd", str(target))
    budget = len(live) if max_genes is None else min(int(max_genes), len(live))
    walker = _Walker(ev, cols[live], orig, to_idx, float(alpha), float(eps), scales_a, lo_hi)
    rows = []
    with PB.bar(total=budget, desc="CGD", unit="gene", progress=progress) as bar:
        if gradient:
            visit = _gradient_walk(walker, s, budget, stop_at_switch, bar)
        else:
            seq = _order(walker, order, rng)[:budget]
            visit = _probe_walk(walker, seq, stop_at_switch, bar)
        for step, (j, n_up, n_down) in enumerate(visit, start=1):
            rows.append(walker.snapshot(step, s.var_names[idx[live[j]]], n_up, n_down))
    final, _ = E.decide_proba(ev.proba)
    trajectory = pd.DataFrame(rows, columns=["step", "gene", "n_up", "n_down",
                                             "n_genes_modified", "frac_to", "frac_original",
                                             "label", "score_to"])
    modified_genes = s.var_names[idx[live[np.flatnonzero(walker.modified)]]]
    modified = blk.copy()
    modified[:, idx[live]] = ev.block[:, cols[live]]
    key = key_added or G.default_key("cgd", s)
    rec = {
        **G.base_record(s, method="cgd", params=params, seed=seed),
        "target": str(target),
        "mode": "gradient" if gradient else "probe",
        "original_label": s.classes[orig],
        "to": s.classes[to_idx],
        "final_label": s.classes[int(final)],
        "switched": bool(int(final) == to_idx),
        "start_frac_to": start_to,
        "start_frac_original": start_orig,
        "n_genes_visited": len(rows),
        "n_genes_modified": len(modified_genes),
        "modified_genes": np.asarray(modified_genes, dtype=str),
        "trajectory": trajectory,
    }
    outcome = "switched" if rec["switched"] else "did not switch"
    G.write(s, step=f"CGD on {target!r}: {outcome} to {rec['to']!r} after modifying "
            f"{len(modified_genes)} genes", start=start, key=key, rec=rec, mask=mask,
            modified=modified, pred=ev.pred, add_layer=add_layer, add_obs=add_obs)
    return adata if copy else None


def _choose_to(s: G.Setup, ev: E.Evaluator, orig: int, to: str | None) -> int:
    if to is None:
        mean = ev.proba.mean(axis=0)
        mean[orig] = -np.inf
        return int(mean.argmax())
    if str(to) not in s.classes:
        raise ScadvInputError(f"to={to!r} is not a class of the classifier ({s.classes}).")
    idx = s.classes.index(str(to))
    if idx == orig:
        raise ScadvInputError(f"the cluster is already labelled {to!r}; pick another label as to.")
    return idx


class _Walker:
    """The state of a walk: the evaluator and what has been modified."""

    def __init__(self, ev: E.Evaluator, cols: np.ndarray, orig: int, to: int, alpha: float,
                 eps: float, scales: np.ndarray, lo_hi: tuple[np.ndarray, np.ndarray] | None
                 ) -> None:
        self.ev, self.cols, self.orig, self.to = ev, cols, orig, to
        self.alpha, self.eps, self.scales, self.lo_hi = alpha, eps, scales, lo_hi
        self.modified = np.zeros(len(cols), dtype=bool)

    def objective(self, proba: np.ndarray) -> np.ndarray:
        return (np.log(np.maximum(proba[..., self.to], _TINY))
                - np.log(np.maximum(proba[..., self.orig], _TINY)))

    def switched(self) -> bool:
        label, _ = E.decide_proba(self.ev.proba)
        return int(label) == self.to

    def active(self) -> np.ndarray:
        return np.flatnonzero(self.ev.pred != self.to)

    def probes(self, j: int, cells: np.ndarray, signs: np.ndarray | None) -> np.ndarray:
        """(cells × probes) candidate values of gene ``j``: both directions (or the given
        per-cell sign) at every scale, clipped to the observed range if asked."""
        x = self.ev.block[cells, self.cols[j]]
        step = self.alpha * np.abs(x) + self.eps
        if signs is None:
            mult = np.concatenate([self.scales, -self.scales])[None, :]
        else:
            mult = signs[:, None] * self.scales[None, :]
        vals = x[:, None] + mult * step[:, None]
        if self.lo_hi is not None:
            vals = np.clip(vals, self.lo_hi[0][j], self.lo_hi[1][j])
        return vals.astype(np.float32)

    def step(self, j: int, signs: np.ndarray | None = None,
             cells: np.ndarray | None = None) -> tuple[int, int]:
        """Probe gene ``j`` for the cells still to switch and keep each cell's best probe."""
        cells = self.active() if cells is None else cells
        if not len(cells):
            return 0, 0
        vals = self.probes(j, cells, None if signs is None else signs)
        n_probe = vals.shape[1]
        rep = np.repeat(cells, n_probe)
        proba = self.ev.pairs(rep, np.full(len(rep), self.cols[j]), vals.ravel())
        gain = self.objective(proba).reshape(len(cells), n_probe)
        best = gain.argmax(axis=1)
        better = gain[np.arange(len(cells)), best] > self.objective(self.ev.proba[cells]) + 1e-6
        if not better.any():
            return 0, 0
        col = self.ev.block[:, self.cols[j]].copy()
        new = vals[np.arange(len(cells)), best]
        up = better & (new > col[cells])
        col[cells[better]] = new[better]
        self.ev.commit(np.asarray([self.cols[j]]), col[:, None])
        self.modified[j] = True
        return int(up.sum()), int(better.sum() - up.sum())

    def snapshot(self, step: int, gene: str, n_up: int, n_down: int) -> dict[str, Any]:
        pred = self.ev.pred
        label, _ = E.decide_proba(self.ev.proba)
        return {
            "step": step, "gene": gene, "n_up": n_up, "n_down": n_down,
            "n_genes_modified": int(self.modified.sum()),
            "frac_to": float((pred == self.to).mean()),
            "frac_original": float((pred == self.orig).mean()),
            "label": self.ev.clf.classes[int(label)],
            "score_to": float(self.ev.proba[:, self.to].mean()),
        }


def _order(w: _Walker, order: Order, rng: np.random.Generator) -> np.ndarray:
    k = len(w.cols)
    if order == "given":
        return np.arange(k)
    tie = rng.permutation(k)
    if order == "random":
        return tie
    # screen: on a sample of the cells still to switch, each gene's best probe at the
    # largest scale in either direction; genes whose probe helps most come first
    cells = w.active()
    if len(cells) > _SCREEN_CELLS:
        cells = np.sort(rng.choice(cells, _SCREEN_CELLS, replace=False))
    if not len(cells):
        return tie
    ev = w.ev
    x = ev.block[cells][:, w.cols]  # (c, k)
    step = (w.alpha * np.abs(x) + w.eps) * float(w.scales.max())
    values = np.stack([x + step, x - step])  # (2, c, k)
    if w.lo_hi is not None:
        values = np.clip(values, w.lo_hi[0], w.lo_hi[1])
    sub = E.evaluator(ev.clf, ev.block[cells], counter=ev.counter, batch_rows=ev.batch_rows)
    base = w.objective(sub.proba)  # (c,)
    gain = np.zeros((len(cells), k))
    # per-cell objective of every (direction, gene) variant, gathered from the pair scan
    for d in range(2):
        changed = values[d] != x
        ci, gj = np.nonzero(changed)
        if len(ci):
            proba = sub.pairs(ci, w.cols[gj], values[d][ci, gj])
            gain[ci, gj] = np.maximum(gain[ci, gj], w.objective(proba) - base[ci])
    score = gain.mean(axis=0)
    return np.lexsort((tie, -score))


def _probe_walk(w: _Walker, seq: np.ndarray, stop_at_switch: bool, bar: tqdm):
    for j in seq:
        if stop_at_switch and w.switched():
            return
        n_up, n_down = w.step(int(j))
        bar.update(1)
        yield int(j), n_up, n_down


def _gradient_walk(w: _Walker, s: G.Setup, budget: int, stop_at_switch: bool, bar: tqdm):
    mlp = s.clf._mlp()
    if mlp is None:  # cgd() refuses gradient=True for other classifiers
        raise ScadvInputError(f"{s.clf.describe()} has no input gradient; use gradient=False.")
    net, device = mlp
    ev = w.ev
    visited = np.zeros(len(w.cols), dtype=bool)
    for _ in range(budget):
        if stop_at_switch and w.switched():
            return
        cells = w.active()
        if not len(cells):
            return
        x = torch.as_tensor(ev.block[cells], device=device)
        grad = _margin_grad(net, x, w.to, w.orig)[:, w.cols]  # (c, k)
        ev.counter.calls += 1
        ev.counter.rows += len(cells)
        xk = ev.block[cells][:, w.cols]
        gain = (np.abs(grad) * (w.alpha * np.abs(xk) + w.eps)).mean(axis=0)
        gain[visited] = -np.inf
        j = int(gain.argmax())
        visited[j] = True
        signs = np.sign(grad[:, j]).astype(np.float32)
        moving = signs != 0
        n_up, n_down = w.step(j, signs=signs[moving], cells=cells[moving])
        bar.update(1)
        yield j, n_up, n_down


def _margin_grad(net: Any, x: torch.Tensor, to: int, orig: int) -> np.ndarray:
    """d(z_to − z_orig)/dx of scadv's MLP, exact, for every row of ``x``."""
    n = x.shape[0]
    g1 = torch.empty_like(x)
    g2 = torch.empty_like(x)
    to_t = torch.full((n,), to, dtype=torch.long, device=x.device)
    orig_t = torch.full((n,), orig, dtype=torch.long, device=x.device)
    # targeted cross-entropy toward `to`: d(z_to − lse); untargeted away from `orig`:
    # d(lse − z_orig); their sum is d(z_to − z_orig) = d(log p_to − log p_orig)
    ENG.mlp_input_grad(net, x, to_t, loss="ce", targeted=True, grad_out=g1)
    ENG.mlp_input_grad(net, x, orig_t, loss="ce", targeted=False, grad_out=g2)
    return (g1 + g2).cpu().numpy()
