"""Realistic synthetic atlases from PBMC3k, written to disk without holding them in memory.

Each synthetic cell is a real PBMC3k cell (with its Seurat label) whose counts are resampled:
a new library size drawn around the original one, then a multinomial draw over the original
cell's gene proportions. So the atlas keeps PBMC3k's genes (all 32,738), sparsity (~850
non-zeros per cell), cell types and their proportions, and no two cells are identical.

    python benchmarks/atlas.py --cells 200000 --out /tmp/atlas_200k.h5ad

The file is written a chunk of cells at a time (anndata's on-disk sparse ``append``), so
memory stays at one chunk whatever the size.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

DATA = Path(os.environ.get("SCADV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def reference() -> ad.AnnData:
    a = ad.read_h5ad(DATA / "pbmc3k_raw.h5ad")
    keep = a.obs["cell_type"].notna().to_numpy()
    return a[keep].copy()


def chunk(ref: ad.AnnData, n: int, rng: np.random.Generator) -> tuple[sparse.csr_matrix,
                                                                        np.ndarray]:
    """``n`` resampled cells (CSR float32 counts) and the reference rows they come from."""
    x = sparse.csr_matrix(ref.X, dtype=np.float64)
    src = rng.integers(0, ref.n_obs, n)
    lib = np.asarray(x.sum(axis=1)).ravel()
    new_lib = np.maximum(1, rng.poisson(lib[src] * rng.lognormal(0.0, 0.25, n)))
    indptr = [0]
    indices, data = [], []
    for i, r in enumerate(src):  # one multinomial per cell: the generator, not the library
        lo, hi = x.indptr[r], x.indptr[r + 1]
        p = x.data[lo:hi] / lib[r]
        draw = rng.multinomial(int(new_lib[i]), p)
        nz = draw > 0
        indices.append(x.indices[lo:hi][nz])
        data.append(draw[nz].astype(np.float32))
        indptr.append(indptr[-1] + int(nz.sum()))
    out = sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), np.asarray(indptr)),
                            shape=(n, ref.n_vars))
    return out, src


def write_atlas(n_cells: int, out: Path, *, seed: int = 0, chunk_size: int = 20_000) -> None:
    ref = reference()
    rng = np.random.default_rng(seed)
    labels, names = [], []
    first = True
    for lo in range(0, n_cells, chunk_size):
        n = min(chunk_size, n_cells - lo)
        x, src = chunk(ref, n, rng)
        labels.append(ref.obs["cell_type"].to_numpy()[src])
        names.append([f"cell{lo + i}" for i in range(n)])
        if first:
            ad.AnnData(X=x, obs=pd.DataFrame(index=names[0]), var=ref.var).write_h5ad(out)
            first = False
        else:
            with h5py.File(out, "a") as f:
                ad.io.sparse_dataset(f["X"]).append(x)
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.concatenate(labels))},
                       index=np.concatenate(names))
    with h5py.File(out, "a") as f:
        del f["obs"]
        ad.io.write_elem(f, "obs", obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    write_atlas(args.cells, args.out, seed=args.seed)
    size = args.out.stat().st_size / 2**30
    print(f"{args.cells} cells written to {args.out} ({size:.2f} GiB) in "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
