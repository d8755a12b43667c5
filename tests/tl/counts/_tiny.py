"""Tiny count-space problems with a brute-force answer, shared by the count-attack tests."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from scadv import _model as M
from scadv.tl._counts import _transform as T


def recipe(n_genes: int, seed: int, *, max_value: float = 10.0) -> dict[str, Any]:
    """A counts recipe whose small standard deviations make single UMIs matter."""
    rng = np.random.default_rng(seed)
    return {"input_kind": "counts", "has_stats": True, "log1p": True, "target_sum": 1e4,
            "max_value": max_value,
            "mean": rng.uniform(0.0, 2.0, n_genes).astype(np.float32),
            "std": rng.uniform(1.0, 3.0, n_genes).astype(np.float32),
            "genes": np.asarray([f"g{i}" for i in range(n_genes)])}


def model(n_genes: int, n_classes: int, seed: int, *, rank: int | None = None) -> M.MLP:
    torch.manual_seed(seed)
    net = M.MLP(n_genes, n_classes, hidden=(16, 8), dropout=(0.0, 0.0), input_rank=rank)
    return net.eval()


def cells(n: int, n_genes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small whole-number counts (with zeros) and the counts on the other genes."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0.2, 3.0, n_genes), size=(n, n_genes)).astype(np.float32)
    rest = rng.integers(2000, 6000, n).astype(np.float64)
    return counts, rest


def predict(net: torch.nn.Module, counts: np.ndarray, rest: np.ndarray, rec: dict[str, Any]
            ) -> np.ndarray:
    """Predicted class of counts through the recipe itself (numpy reference)."""
    lib = counts.sum(axis=1).astype(np.float64) + rest
    x = T.reference_model_input(counts, lib, rec)
    with torch.no_grad():
        return net(torch.as_tensor(x)).argmax(dim=1).numpy()


def brute_force(net: torch.nn.Module, counts: np.ndarray, rest: np.ndarray, y: np.ndarray,
                rec: dict[str, Any], *, budget: int, cap_add: int, cap_remove: int,
                library: tuple[float, float] | None, detected_only: bool, targeted: bool
                ) -> np.ndarray:
    """The true fewest UMIs (Σ|Δ|) that succeed per cell, -1 if none within ``budget``."""
    g = counts.shape[1]
    edits = np.array(list(itertools.product(range(-cap_remove, cap_add + 1), repeat=g)),
                     dtype=np.float32)
    cost = np.abs(edits).sum(axis=1)
    edits, cost = edits[cost <= budget], cost[cost <= budget]
    out = np.full(len(counts), -1, dtype=np.int64)
    for i, (c0, r) in enumerate(zip(counts, rest, strict=True)):
        c = c0 + edits
        ok = (c >= 0).all(axis=1)
        if detected_only:
            ok &= (edits[:, c0 == 0] == 0).all(axis=1)
        lib = c.sum(axis=1) + r
        if library is not None:
            lib0 = c0.sum() + r
            ok &= (lib >= min(library[0], lib0)) & (lib <= max(library[1], lib0))
        pred = predict(net, c[ok], np.full(int(ok.sum()), r), rec)
        hit = pred == y[i] if targeted else pred != y[i]
        if hit.any():
            out[i] = int(cost[ok][hit].min())
    return out
