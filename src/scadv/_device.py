"""Device choice and seeding."""

from __future__ import annotations

from typing import Literal

import torch

from ._errors import ScadvInputError

Device = Literal["auto", "cpu", "cuda"] | str | torch.device


def resolve(device: Device = "auto") -> torch.device:
    """``'auto'`` → CUDA when available, else CPU; any other value is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ScadvInputError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScadvInputError(
            "device='cuda' was requested but no CUDA GPU is available; use 'auto'.")
    return dev


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded torch generator on ``device`` (random starts, shuffling, noise)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
