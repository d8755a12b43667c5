"""Gene modifications of the gene-level attacks (adverSCarial's ``advModifications``).

A modification gives, for a set of genes, the new values of the target cluster's cells. Its
statistics are taken over **all** cells (the gene's column); only the cluster's cells change.

Accepted specifications (one, or a list):

``'perc1'``, ``'perc99'``, ``'perc<q>'``
    The gene's q-th percentile over all cells (``'perc1'``: as if switched off, ``'perc99'``:
    switched fully on).
a number, or ``'fixed=<v>'``
    That value.
``'random'``
    Uniform random values within the gene's observed range (seeded).
``'positive_aberrant'``, ``'negative_aberrant'``
    ±10,000 × the gene's largest absolute value (its maximum for centred z-scores).
``'decile+k'``, ``'decile-k'``
    Each cell moves k deciles up or down the gene's distribution: its rank among all cells is
    shifted by ``round(k · n / 10)`` positions (clipped at the extremes) and it takes the value
    found there.
a callable ``f(cluster_values, all_values)``
    Both are (cells × genes) arrays of the modified genes: the cluster's current values and the
    values of all cells. Returns the cluster's new values (anything that broadcasts to
    ``cluster_values.shape``). It is applied to many genes at once, column by column, so it must
    treat columns independently (``axis=0`` statistics).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ... import _rows as RW
from ..._errors import ScadvInputError
from ._matrix import AttackedMatrix, GeneValues

ModFn = Callable[[np.ndarray, np.ndarray], Any]
ModSpec = Union[str, float, int, ModFn]  # noqa: UP007 - also used at runtime by Sphinx
ABERRANT = 1e4

_PERC = re.compile(r"^perc(\d+(?:\.\d+)?)$")
_DECILE = re.compile(r"^decile([+-])(\d+(?:\.\d+)?)$")
_FIXED = re.compile(r"^fixed=(.+)$")


@dataclass(frozen=True)
class Modification:
    """One parsed modification."""

    name: str
    kind: str  # 'percentile', 'fixed', 'random', 'aberrant', 'decile', 'function'
    value: float = 0.0
    fn: ModFn | None = None

    @property
    def random(self) -> bool:
        return self.kind == "random"

    def values(self, columns: np.ndarray, cluster: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
        """New values (cluster cells × genes) given the genes' columns over all cells.

        Parameters
        ----------
        columns
            Dense (all cells × genes) values of the modified genes.
        cluster
            Boolean mask of the cluster's cells (over all cells).
        rng
            Generator for ``'random'``.
        """
        n_c = int(cluster.sum())
        shape = (n_c, columns.shape[1])
        if self.kind == "percentile":
            v = np.percentile(columns, self.value, axis=0)
        elif self.kind == "fixed":
            v = np.full(columns.shape[1], self.value)
        elif self.kind == "aberrant":
            top = np.abs(columns).max(axis=0) if len(columns) else np.zeros(columns.shape[1])
            v = self.value * ABERRANT * np.where(top > 0, top, 1.0)
        elif self.kind == "random":
            lo, hi = columns.min(axis=0), columns.max(axis=0)
            return (lo + (hi - lo) * rng.random(shape)).astype(np.float32)
        elif self.kind == "decile":
            return _decile_shift(columns, cluster, self.value)
        else:
            if self.fn is None:
                raise ScadvInputError(f"the function modification {self.name!r} has no function.")
            out = self.fn(columns[cluster].copy(), columns.copy())
            try:
                out = np.broadcast_to(np.asarray(out, dtype=np.float32), shape)
            except ValueError as err:
                raise ScadvInputError(
                    f"the modification function {self.name!r} returned shape "
                    f"{np.shape(out)}, which does not broadcast to the cluster's {shape} "
                    "(cells × genes)."
                ) from err
            if not np.isfinite(out).all():
                raise ScadvInputError(
                    f"the modification function {self.name!r} returned NaN or infinite values."
                )
            return np.array(out, dtype=np.float32)
        return np.broadcast_to(np.asarray(v, dtype=np.float32), shape).copy()

    def from_stats(self, stats: GeneValues, cols: np.ndarray, current: np.ndarray | None,
                   n_cells: int, rng: np.random.Generator) -> np.ndarray:
        """New values (cells × genes) from the genes' sorted values over all cells: the same
        numbers as :meth:`values`, without the dense columns (not for functions).

        ``current``: those cells' values of the genes (needed by ``'decile'`` only).
        """
        shape = (n_cells, len(cols))
        if self.kind == "percentile":
            v = stats.percentile(cols, self.value)
        elif self.kind == "fixed":
            v = np.full(len(cols), self.value)
        elif self.kind == "aberrant":
            top = np.maximum(np.abs(stats.minimum(cols)), np.abs(stats.maximum(cols))) if (
                stats.n_obs) else np.zeros(len(cols), dtype=np.float32)
            v = self.value * ABERRANT * np.where(top > 0, top, 1.0)
        elif self.kind == "random":
            lo, hi = stats.minimum(cols), stats.maximum(cols)
            return (lo + (hi - lo) * rng.random(shape)).astype(np.float32)
        elif self.kind == "decile":
            if current is None:
                raise RuntimeError("a decile modification needs the cells' current values.")
            pos = np.clip(stats.rank(cols, current) + round(self.value * stats.n_obs / 10), 0,
                          stats.n_obs - 1)
            return stats.order_stat(cols, pos)
        else:
            raise RuntimeError(f"the modification {self.name!r} needs the genes' columns.")
        return np.broadcast_to(np.asarray(v, dtype=np.float32), shape).copy()


def _decile_shift(columns: np.ndarray, cluster: np.ndarray, k: float) -> np.ndarray:
    """Shift each cluster cell's rank among all cells by ``round(k · n / 10)`` positions."""
    n = columns.shape[0]
    ordered = np.sort(columns, axis=0)
    block = columns[cluster]
    # rank = number of cells with a strictly smaller value (adverSCarial's xRank), per column
    rank = np.empty(block.shape, dtype=np.int64)
    for j in range(columns.shape[1]):
        rank[:, j] = np.searchsorted(ordered[:, j], block[:, j], side="left")
    pos = np.clip(rank + round(k * n / 10), 0, n - 1)
    return np.take_along_axis(ordered, pos, axis=0).astype(np.float32)


def parse(spec: ModSpec | Modification) -> Modification:
    """Parse one modification specification (see the module docstring)."""
    if isinstance(spec, Modification):
        return spec
    if isinstance(spec, (bool, np.bool_)):
        raise ScadvInputError(f"a modification cannot be a boolean ({spec!r}).")
    if isinstance(spec, (int, float, np.number)):
        if not np.isfinite(spec):
            raise ScadvInputError(f"a fixed modification value must be finite, got {spec!r}.")
        return Modification(f"fixed={float(spec):g}", "fixed", float(spec))
    if callable(spec):
        return Modification(f"fn:{getattr(spec, '__name__', type(spec).__name__)}", "function",
                            fn=spec)
    if not isinstance(spec, str):
        raise ScadvInputError(f"cannot read the modification {spec!r}; {_HELP}")
    name = spec.strip()
    if m := _PERC.match(name):
        q = float(m.group(1))
        if not 0 <= q <= 100:
            raise ScadvInputError(f"percentile modification {name!r} must be within perc0–perc100.")
        return Modification(name, "percentile", q)
    if name in ("positive_aberrant", "negative_aberrant"):
        return Modification(name, "aberrant", 1.0 if name.startswith("positive") else -1.0)
    if name == "random":
        return Modification(name, "random")
    if m := _DECILE.match(name):
        k = float(m.group(2)) * (1 if m.group(1) == "+" else -1)
        return Modification(name, "decile", k)
    if m := _FIXED.match(name):
        try:
            value = float(m.group(1))
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise ScadvInputError(f"cannot read the fixed value in {name!r}; e.g. 'fixed=3'.")
        return Modification(f"fixed={value:g}", "fixed", value)
    raise ScadvInputError(f"unknown modification {spec!r}; {_HELP}")


_HELP = ("use 'perc1', 'perc99' (any 'perc<q>'), 'random', 'positive_aberrant', "
         "'negative_aberrant', 'decile+1' / 'decile-1' (any number of deciles), a number (a "
         "fixed value) or a function f(cluster_values, all_values).")


def parse_many(spec: ModSpec | Sequence[ModSpec]) -> list[Modification]:
    """One or several specifications → a list of distinct modifications."""
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    elif isinstance(spec, str) or not isinstance(spec, Sequence):
        items = [spec]
    else:  # another kind of sequence: read as one (unreadable) specification, as parse() does
        raise ScadvInputError(f"cannot read the modification {spec!r}; {_HELP}")
    if not items:
        raise ScadvInputError(f"give at least one modification; {_HELP}")
    mods = [parse(s) for s in items]
    names = [m.name for m in mods]
    if len(set(names)) != len(names):
        raise ScadvInputError(f"modifications are repeated: {names}.")
    return mods


def new_values(mods: Sequence[Modification], x: AttackedMatrix, cols: np.ndarray,
               cluster: np.ndarray, rng: np.random.Generator, *, chunk: int = 1024,
               current: np.ndarray | None = None) -> np.ndarray:
    """(modifications × cluster cells × genes) new values for the genes ``cols`` of ``x``.

    The built-in modifications read the genes' sorted values over all cells
    (:meth:`AttackedMatrix.gene_values`, a fraction of the non-zeros in memory); function
    modifications get the genes' dense columns over all cells, ``chunk`` genes at a time (fewer
    when there are very many cells), all genes at once when a function is among ``mods``.
    Random values are drawn in the same blocks of genes either way, so both give the same
    numbers.

    ``current``: the values of ``cols`` in the cells to modify, when the caller holds them (a
    block of the cluster's cells: ``cluster`` is then not read); otherwise the cluster's cells
    are read when a ``'decile'`` modification needs them.
    """
    n_c = int(cluster.sum()) if current is None else len(current)
    RW.check_fits(len(mods) * n_c * len(cols) * 4,
                  what=f"the new values of {len(cols)} genes in {n_c} cells", hint=(
                      "Attack a smaller cluster, fewer genes (genes=...) or fewer "
                      "modifications at a time."))
    out = np.empty((len(mods), n_c, len(cols)), dtype=np.float32)
    if any(m.kind == "function" for m in mods):
        if current is not None:
            raise RuntimeError("function modifications see the whole cluster at once.")
        columns = x.columns(cols)
        for i, mod in enumerate(mods):
            out[i] = mod.values(columns, cluster, rng)
        return out
    stats = x.gene_values()
    if current is None and any(m.kind == "decile" for m in mods):
        current = x.rows(np.flatnonzero(cluster))[:, cols]
    step = max(min(chunk, x.column_step(len(cols))), 1)
    for lo in range(0, len(cols), step):
        hi = min(lo + step, len(cols))
        block = None if current is None else current[:, lo:hi]
        for i, mod in enumerate(mods):
            out[i, :, lo:hi] = mod.from_stats(stats, cols[lo:hi], block, n_c, rng)
    return out
