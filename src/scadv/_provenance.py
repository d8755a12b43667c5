"""Provenance: what produced a result (package versions, device, parameters, time)."""

from __future__ import annotations

import contextlib
import inspect
import io
import platform
import sys
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from typing import Any

import torch

_PACKAGES = ("scadv", "anndata", "scanpy", "torch", "numpy", "scipy", "pandas", "scikit-learn",
             "scikit-misc", "matplotlib", "session-info", "tqdm", "captum")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Installed versions of scadv and its dependencies, plus Python and the platform."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out


def session_text() -> str:
    """The text report of :mod:`session_info`: versions of the packages of this session and
    of everything they import (recomputed only when new modules have been imported)."""
    return _session_text(len(sys.modules))


@lru_cache(maxsize=1)
def _session_text(n_modules: int) -> str:
    import session_info

    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        session_info.show(html=False, dependencies=True, write_req_file=False)
    return buf.getvalue().strip()


def record(params: Mapping[str, Any], *, seed: int | None = None,
           device: torch.device | None = None) -> dict[str, Any]:
    """Provenance of one step: its parameters, seed, device, versions and a UTC timestamp; on
    the CPU also torch's thread count (``cpu_threads``: the last bits of a matrix product, and
    so gradient-sign attacks and training, depend on it; see the docs' reproducibility
    notes)."""
    out: dict[str, Any] = {
        "params": {k: _plain(v) for k, v in params.items()},
        "versions": versions(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if seed is not None:
        out["seed"] = int(seed)
    if device is not None:
        out["device"] = str(device)
        if device.type == "cuda":
            out["device_name"] = torch.cuda.get_device_name(device)
        else:
            out["cpu_threads"] = int(torch.get_num_threads())
    return out


def call_params(frame_locals: Mapping[str, Any], func: Any) -> dict[str, Any]:
    """The arguments a public function was called with (everything but the AnnData)."""
    names = [p for p in inspect.signature(func).parameters if p not in ("adata", "copy")]
    return {name: frame_locals[name] for name in names if name in frame_locals}


def _plain(value: Any) -> Any:
    """A parameter as something HDF5 can store and a human can read."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    scalar = (bool, int, float, str)
    if isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value):
        return list(value)
    if isinstance(value, torch.device):
        return str(value)
    if hasattr(value, "shape"):
        return f"<{type(value).__name__} of shape {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return repr(value)
