"""Figures as pure functions of results: matplotlib for files (publication export).

Plotly figures for the dashboard join this module with the pages.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_bytes


def image_to_display(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] → ``(H, W)`` grey or ``(H, W, 3)`` RGB for imshow."""
    arr = image.detach().cpu().clamp(0, 1).numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr[:3], (1, 2, 0))


def explanation_figure(image: torch.Tensor, explanation_map: torch.Tensor, title: str = "", cmap: str = "inferno",
                       alpha: float = 0.55):
    """Input | map | overlay, side by side."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = image_to_display(image)
    m = explanation_map.detach().cpu().numpy()
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), dpi=120)
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    axes[0].set_title("input")
    im = axes[1].imshow(m, cmap=cmap)
    axes[1].set_title("map")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    axes[2].imshow(m, cmap=cmap, alpha=alpha)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render to PNG in memory, then write atomically."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def attack_panels_figure(original: torch.Tensor, perturbed: torch.Tensor, original_map: torch.Tensor,
                         attacked_map: torch.Tensor, target_map: torch.Tensor | None = None, title: str = "",
                         cmap: str = "inferno"):
    """Original, perturbed, amplified perturbation, original map, attacked map (and target map)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    delta = (perturbed - original).detach().cpu()
    scale = float(delta.abs().max()) or 1.0
    amplified = (delta / (2 * scale) + 0.5).clamp(0, 1)  # ±max perturbation → [0, 1]
    panels = [("original", image_to_display(original), None), ("perturbed", image_to_display(perturbed), None),
              (f"perturbation ×{0.5 / scale:.0f}", image_to_display(amplified), None),
              ("original map", original_map.detach().cpu().numpy(), cmap),
              ("attacked map", attacked_map.detach().cpu().numpy(), cmap)]
    if target_map is not None:
        panels.append(("target map", target_map.detach().cpu().numpy(), cmap))
    vmax = max(float(p[1].max()) for p in panels[3:])
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6), dpi=120)
    for ax, (name, arr, cm) in zip(axes, panels):
        if cm is None:
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)
        else:
            ax.imshow(arr, cmap=cm, vmin=0, vmax=vmax)  # one colour scale for all maps
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def overlay_rgb(image: torch.Tensor, explanation_map: torch.Tensor, cmap: str = "inferno", alpha: float = 0.5,
                scale: int = 4) -> np.ndarray:
    """An (H·scale, W·scale, 3) uint8 picture: the image in grey/RGB with the map coloured on top.

    The map is scaled by its own maximum; ``scale`` enlarges small images by pixel repetition.
    """
    from matplotlib import colormaps

    img = image_to_display(image)
    base = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    m = explanation_map.detach().cpu().numpy()
    top = m.max()
    coloured = colormaps[cmap](m / top if top > 0 else m)[..., :3]
    out = (1 - alpha) * base + alpha * coloured
    out = np.kron(out, np.ones((scale, scale, 1))) if scale > 1 else out
    return (out.clip(0, 1) * 255).astype(np.uint8)
