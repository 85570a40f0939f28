"""Device choice: ``auto`` picks CUDA, then MPS, then CPU. Nothing else hard-codes a device."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use auto or cpu")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNGs and return a CPU generator for code that takes one explicitly."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
