"""Figures as pure functions of results: matplotlib, in one publication style, for the dashboard and for
files (PNG and PDF export)."""

from __future__ import annotations

import os
import sys
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


PUBLICATION_STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
                     "axes.spines.right": False, "savefig.bbox": "tight", "pdf.fonttype": 42}


def figure_bytes(fig, fmt: str = "png", dpi: int = 300) -> bytes:
    """The figure as PNG or PDF bytes (fonts embedded as TrueType so journals accept the PDF)."""
    import io

    import matplotlib

    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"figure format must be png, pdf or svg, not {fmt!r}")
    buf = io.BytesIO()
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render in memory (format from the suffix), then write atomically."""
    data = figure_bytes(fig, Path(path).suffix.lstrip(".").lower() or "png", dpi=120)
    if "matplotlib.pyplot" in sys.modules:  # a figure made without pyplot is not registered there
        sys.modules["matplotlib.pyplot"].close(fig)
    return atomic_write_bytes(path, data)


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 3.3, height: float = 2.6, **kwargs):
    """A matplotlib figure in the publication style (3.3 in ≈ one column of a two-column paper)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(PUBLICATION_STYLE):
        return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), dpi=120, **kwargs)


def attack_panels_figure(original: torch.Tensor, perturbed: torch.Tensor, original_map: torch.Tensor,
                         attacked_map: torch.Tensor, target_map: torch.Tensor | None = None, title: str = "",
                         cmap: str = "inferno"):
    """Original, perturbed, amplified perturbation, original map, attacked map (and target map).

    A bare ``matplotlib.figure.Figure`` with fixed margins: no pyplot (its import and backend set-up) and
    no tight-layout pass (text measured twice), which a one-image ``explrobust attack-explanation`` paid for."""
    from matplotlib.figure import Figure

    delta = (perturbed - original).detach().cpu()
    largest = float(delta.abs().max())
    scale = largest or 1.0
    amplified = (delta / (2 * scale) + 0.5).clamp(0, 1)  # ±max perturbation → [0, 1]
    panels = [("original", image_to_display(original), None), ("perturbed", image_to_display(perturbed), None),
              (f"perturbation ×{0.5 / scale:.0f}" if largest else "perturbation (none)", image_to_display(amplified),
               None),
              ("original map", original_map.detach().cpu().numpy(), cmap),
              ("attacked map", attacked_map.detach().cpu().numpy(), cmap)]
    if target_map is not None:
        panels.append(("target map", target_map.detach().cpu().numpy(), cmap))
    vmax = max(float(p[1].max()) for p in panels[3:])
    fig = Figure(figsize=(2.2 * len(panels), 2.6), dpi=120)
    axes = fig.subplots(1, len(panels))
    for ax, (name, arr, cm) in zip(axes, panels):
        if cm is None:
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)
        else:
            ax.imshow(arr, cmap=cm, vmin=0, vmax=vmax)  # one colour scale for all maps
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    # square panels with one title line each; the top margin leaves room for the suptitle
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78 if title else 0.86, wspace=0.08)
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


# --- attack lab and classification robustness pages ------------------------------------------------


def trajectory_figure(curves: dict[str, dict[str, list[float]]], panels: list[tuple[str, str]],
                      log_y: tuple[str, ...] = (), title: str = ""):
    """One subplot per recorded quantity over attack steps, one line per model.

    ``curves[model]`` holds ``"step"`` and one list per key of ``panels`` (``(key, axis label)``);
    keys in ``log_y`` get a logarithmic axis (where their values are positive).
    """
    import matplotlib

    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=len(panels), width=3.3, height=2.4, squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            positive = True
            for model, curve in curves.items():
                values = np.asarray(curve[key], dtype=float)
                positive &= bool(np.all(values[np.isfinite(values)] > 0))
                ax.plot(curve["step"], values, label=model, linewidth=1.2)
            if key in log_y and positive:
                ax.set_yscale("log")
            ax.set_xlabel("attack step")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        if len(curves) > 1:
            axes[0][-1].legend(frameon=False, loc="best")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def _finish_curves(fig, ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, light grid, legend and optional title of a one-axes curve figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()


def accuracy_vs_eps_figure(curves: dict[str, tuple[list[float], list[float]]], xlabel: str = "ε (pixel units)",
                           title: str = ""):
    """Accuracy under attack against the budget ε, one line per model (``curves[model] = (eps, accuracy)``)."""
    import matplotlib

    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, ax = new_figure(width=3.6, height=2.6)
        for model, (eps, acc) in curves.items():
            ax.plot(eps, acc, marker="o", markersize=3, linewidth=1.2, label=model)
        ax.set_ylim(-0.02, 1.02)
        _finish_curves(fig, ax, xlabel, "accuracy under attack", title)
    return fig


def adversarial_gallery_figure(clean: torch.Tensor, adversarial: torch.Tensor, clean_titles: list[str],
                               adversarial_titles: list[str], flipped: list[bool], title: str = ""):
    """Clean images, their adversarial versions and the amplified perturbations, one column per image.

    Titles of adversarial images whose prediction changed are drawn in red.
    """
    import matplotlib

    n = clean.shape[0]
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=n, nrows=3, width=1.1, height=1.25, squeeze=False)
        for i in range(n):
            delta = (adversarial[i] - clean[i]).detach().cpu()
            scale = float(delta.abs().max()) or 1.0
            rows = [(image_to_display(clean[i]), clean_titles[i], "black"),
                    (image_to_display(adversarial[i]), adversarial_titles[i], "tab:red" if flipped[i] else "black"),
                    (image_to_display((delta / (2 * scale) + 0.5).clamp(0, 1)), "perturbation", "dimgray")]
            for ax, (arr, text, colour) in zip(axes[:, i], rows):
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)
                ax.set_title(text, fontsize=6, color=colour)
                ax.set_axis_off()
        if title:
            fig.suptitle(title)
        # a fixed grid of axis-free images: margins set by hand (tight_layout measures all 3·n titles: ~5× slower)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.86 if title else 0.92, wspace=0.1, hspace=0.55)
    return fig


def flip_eps_figure(min_eps: dict[str, list[float]], eps_max: float, title: str = ""):
    """Fraction of images whose prediction flips at a budget ≤ ε (an empirical CDF of the minimal flipping
    ε), one step line per model; images not flipped within ``eps_max`` (``inf``) keep the curve below 1."""
    import matplotlib

    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, ax = new_figure(width=3.6, height=2.6)
        for model, values in min_eps.items():
            v = np.asarray(values, dtype=float)
            if v.size == 0:
                continue
            finite = np.sort(v[np.isfinite(v)])
            xs = np.concatenate([[0.0], finite, [eps_max]])
            ys = np.concatenate([[0.0], np.arange(1, finite.size + 1) / v.size, [finite.size / v.size]])
            ax.step(xs, ys, where="post", linewidth=1.2, label=model)
        ax.set_xlim(0, eps_max)
        ax.set_ylim(-0.02, 1.02)
        _finish_curves(fig, ax, "ε (pixel units)", "fraction flipped at ≤ ε", title)
    return fig


# --- clusters and loss-landscape pages -------------------------------------------------------------


def _category_colours(categories: list) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def embedding_scatter_figure(x, y, groups, group_name: str = "", highlight=None, pairs=None,
                             highlight_name: str = "prototype", title: str = "", xlabel: str = "dim 1",
                             ylabel: str = "dim 2"):
    """A 2-D embedding coloured by a categorical ``groups``; ``highlight`` (bool per point) draws larger,
    outlined markers; ``pairs`` (index pairs) are drawn as thin victim→target lines."""
    import matplotlib
    from matplotlib.collections import LineCollection

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    g = np.asarray(groups)
    cats = sorted(set(g.tolist()), key=lambda v: (isinstance(v, str), v))
    colours = _category_colours(cats)
    hl = np.zeros(xs.size, dtype=bool) if highlight is None else np.asarray(highlight, dtype=bool)
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, ax = new_figure(width=4.6, height=3.4)
        if pairs:
            p = np.asarray(pairs, dtype=int)
            segments = np.stack([np.stack([xs[p[:, 0]], ys[p[:, 0]]], 1), np.stack([xs[p[:, 1]], ys[p[:, 1]]], 1)], 1)
            ax.add_collection(LineCollection(segments, colors="0.4", linewidths=0.4, alpha=0.5, zorder=1))
        for c in cats:
            sel = g == c
            ax.scatter(xs[sel & ~hl], ys[sel & ~hl], s=4, color=colours[c], linewidths=0, label=str(c), zorder=2)
            if (sel & hl).any():
                ax.scatter(xs[sel & hl], ys[sel & hl], s=22, color=colours[c], edgecolors="black", linewidths=0.6,
                           marker="D", zorder=3)
        if hl.any():
            ax.scatter([], [], s=22, color="white", edgecolors="black", linewidths=0.6, marker="D", label=highlight_name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), title=group_name or None,
                  markerscale=2, handletextpad=0.2)
        if title:
            ax.set_title(title)
        fig.tight_layout()
    return fig


def overlay_grid_figure(images: torch.Tensor, explanation_maps: torch.Tensor, captions: list[str],
                        cmap: str = "inferno", alpha: float = 0.5, ncols: int = 8, title: str = ""):
    """Images with their explanation maps on top (as :func:`overlay_rgb`), in a grid with captions."""
    import matplotlib

    n = images.shape[0]
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=ncols, nrows=nrows, width=1.0, height=1.15, squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if k < n:
                ax.imshow(overlay_rgb(images[k], explanation_maps[k], cmap, alpha, scale=1))
                ax.set_title(captions[k], fontsize=5)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


_ATTACK_STYLES = {"PGD": ("--", "x"), "IFIA": (":", "+")}


def landscape_1d_figure(axis, curves: dict[str, dict[str, np.ndarray]], loss_labels: dict[str, str],
                        endpoints: dict[str, dict[str, float]] | None = None, log_y=False, xlabel: str = "",
                        title: str = ""):
    """Loss along one input direction: one panel per loss (same x axis), one line per model.

    ``curves[model][loss]`` are values on ``axis``; the clean input (axis 0) is a dot and
    ``endpoints[model][attack]`` (a projected coordinate) a vertical line in the model's colour.
    ``log_y``: True (every panel) or the losses whose axis is logarithmic; values ≤ 0 are drawn at the smallest
    positive value (:func:`log_floor`), and a panel with no positive value stays linear.
    """
    import matplotlib

    a = np.asarray(axis, dtype=float)
    centre = a.size // 2
    models = list(curves)
    colours = _category_colours(models)
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=len(loss_labels), width=3.3, height=2.5, squeeze=False, sharex=True)
        for ax, (loss, label) in zip(axes[0], loss_labels.items()):
            logarithmic = log_y is True or bool(log_y and loss in log_y)
            # values that underflowed to 0 sit at the smallest positive one (a log axis cannot show 0)
            floor = log_floor(np.concatenate([np.ravel(curves[m][loss]) for m in models])) if logarithmic else None
            for model in models:
                v = np.asarray(curves[model][loss], dtype=float)
                v = v if floor is None else np.clip(v, floor, None)
                ax.plot(a, v, color=colours[model], linewidth=1.2, label=model)
                ax.plot([a[centre]], [v[centre]], "o", color=colours[model], markersize=3.5,
                        markeredgecolor="black", markeredgewidth=0.5)
                for attack, coord in (endpoints or {}).get(model, {}).items():
                    ax.axvline(coord, color=colours[model], linestyle=_ATTACK_STYLES.get(attack, ("-.", "*"))[0],
                               linewidth=0.9, alpha=0.8)
            if floor is not None:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel or "step along the direction (pixel units)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        handles = [matplotlib.lines.Line2D([], [], color=colours[m], linewidth=1.2, label=m) for m in models]
        handles.append(matplotlib.lines.Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black",
                                               markersize=3.5, label="clean input"))
        attacks = sorted({att for e in (endpoints or {}).values() for att in e})
        handles += [matplotlib.lines.Line2D([], [], color="0.3", linestyle=_ATTACK_STYLES.get(att, ("-.", "*"))[0],
                                            linewidth=0.9, label=f"{att} end (projected)") for att in attacks]
        axes[0][-1].legend(handles=handles, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def landscape_2d_figure(axis, grids: dict[str, dict[str, np.ndarray]], loss_labels: dict[str, str],
                        endpoints: dict[str, dict[str, np.ndarray]] | None = None, log_colour: bool = False,
                        surface: bool = True, title: str = ""):
    """Loss over a plane of inputs: one row per model; per loss a 3-D surface and a filled contour.

    ``grids[model][loss][i, j]`` is the loss at (axis[i], axis[j]). Every panel of a loss shares one
    colour scale (and surface height) across models, and every panel the same axes. ``log_colour``
    draws log₁₀ of the loss, floored at its 2nd percentile over all models (the clean point of an
    explanation loss is 0). The clean input (0, 0) is a dot; ``endpoints[model][attack]`` ``(n, 2)`` are
    projected attack endpoints.
    """
    import matplotlib
    from matplotlib.colors import Normalize

    a = np.asarray(axis, dtype=float)
    A, B = np.meshgrid(a, a, indexing="ij")
    models = list(grids)
    per_loss = 2 if surface else 1
    ncols = per_loss * len(loss_labels)
    shown: dict[str, dict[str, np.ndarray]] = {m: {} for m in models}
    norms = {}
    for loss in loss_labels:
        values = np.concatenate([np.asarray(grids[m][loss], dtype=float).ravel() for m in models])
        floor = None
        if log_colour:
            positive = values[values > 0]
            floor = max(float(np.percentile(positive, 2)), float(positive.max()) * 1e-12) if positive.size else 1e-12
        for m in models:
            z = np.asarray(grids[m][loss], dtype=float)
            shown[m][loss] = np.log10(np.clip(z, floor, None)) if log_colour else z
        allv = np.concatenate([shown[m][loss].ravel() for m in models])
        lo, hi = float(allv.min()), float(allv.max())
        norms[loss] = Normalize(vmin=lo, vmax=hi if hi > lo else lo + max(abs(lo), 1.0) * 1e-6)
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=ncols, nrows=len(models), width=2.5, height=2.3, squeeze=False)
        for r, model in enumerate(models):
            for li, (loss, label) in enumerate(loss_labels.items()):
                z, norm = shown[model][loss], norms[loss]
                if surface:
                    axes[r][per_loss * li].remove()
                    ax3 = fig.add_subplot(len(models), ncols, r * ncols + per_loss * li + 1, projection="3d")
                    ax3.plot_surface(A, B, z, cmap="viridis", norm=norm, linewidth=0, antialiased=True, rstride=1,
                                     cstride=1)
                    ax3.set_zlim(norm.vmin, norm.vmax)
                    ax3.set_xlabel("a (dir. 1)", labelpad=-8)
                    ax3.set_ylabel("b (dir. 2)", labelpad=-8)
                    if log_colour:
                        ax3.set_zlabel("log₁₀", labelpad=-6)
                    ax3.tick_params(pad=-3, labelsize=5)
                    ax3.set_title(f"{model}: {label}")
                ax = axes[r][per_loss * li + (1 if surface else 0)]
                levels = matplotlib.ticker.MaxNLocator(14).tick_values(norm.vmin, norm.vmax)
                cs = ax.contourf(A, B, z, levels=levels, cmap="viridis", norm=norm)
                ax.contour(A, B, z, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
                bar = fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.03)
                if log_colour:
                    bar.set_label("log₁₀ " + label if not surface else "log₁₀")
                ax.plot([0], [0], "o", color="white", markeredgecolor="black", markersize=4, label="clean")
                for attack, pts in (endpoints or {}).get(model, {}).items():
                    p = np.atleast_2d(np.asarray(pts, dtype=float))
                    ax.plot(p[:, 0], p[:, 1], _ATTACK_STYLES.get(attack, ("-.", "*"))[1], color="red", markersize=6,
                            markeredgewidth=1.2, linestyle="", label=f"{attack} end")
                ax.set_xlim(a[0], a[-1])
                ax.set_ylim(a[0], a[-1])
                ax.set_aspect("equal")
                ax.set_xlabel("a (direction 1)")
                ax.set_ylabel("b (direction 2)")
                ax.set_title(f"{model}: {label}" if not surface else "contour")
                if r == 0 and li == len(loss_labels) - 1:
                    ax.legend(frameon=True, framealpha=0.7, loc="upper right", fontsize=5)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


# --- robustness study page -------------------------------------------------------------------------


def _study_colours(groups: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(groups)}


def robustness_scatter_figure(points: list[dict], x_label: str, y_label: str, title: str = "", log_y: bool = False,
                              fit_line: bool = True):
    """Classification robustness (x) against explanation robustness (y), one point per model.

    ``points``: dicts with ``x``, ``y``, ``label`` (written next to the point), ``group`` (colour and
    legend) and optionally ``y_low``/``y_high`` (an error bar, e.g. a bootstrap CI over pairs).
    ``fit_line`` adds the least-squares line (on log y when ``log_y``).
    """
    import matplotlib

    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, ax = new_figure(width=4.8, height=3.4)
        groups = sorted({p["group"] for p in points})
        colours = _study_colours(groups)
        for g in groups:
            pts = [p for p in points if p["group"] == g]
            xs = np.array([p["x"] for p in pts], dtype=float)
            ys = np.array([p["y"] for p in pts], dtype=float)
            lo = np.array([p.get("y_low") if p.get("y_low") is not None else p["y"] for p in pts], dtype=float)
            hi = np.array([p.get("y_high") if p.get("y_high") is not None else p["y"] for p in pts], dtype=float)
            err = np.vstack([np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)])
            ax.errorbar(xs, ys, yerr=err if err.any() else None, fmt="o", markersize=4, capsize=2, linewidth=0.8,
                        color=colours[g], label=g)
        for p in points:
            ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(4, 3), fontsize=6,
                        color="0.25")
        xs = np.array([p["x"] for p in points], dtype=float)
        ys = np.array([p["y"] for p in points], dtype=float)
        if log_y and np.all(ys > 0):
            ax.set_yscale("log")
        if fit_line and xs.size >= 2 and np.ptp(xs) > 0:
            on_log = log_y and np.all(ys > 0)
            slope, intercept = np.polyfit(xs, np.log10(ys) if on_log else ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 50)
            line = slope * grid + intercept
            ax.plot(grid, 10 ** line if on_log else line, linestyle="--", linewidth=0.8, color="0.5",
                    label="least squares")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if points:
            ax.legend(frameon=False, loc="best")
        if title:
            ax.set_title(title)
        fig.tight_layout()
    return fig


def trades_sweep_figure(rows: list[dict], measure_label: str, eps: float, title: str = ""):
    """The TRADES β sweep: clean and PGD accuracy (left) and explanation robustness (right) against β.

    ``rows``: dicts with ``beta``, ``clean_accuracy``, ``pgd_accuracy`` (fractions), ``value`` and
    optionally ``value_ci_low``/``value_ci_high``; β = 0 is drawn as the natural model.
    """
    import matplotlib

    rows = sorted(rows, key=lambda r: r["beta"])
    beta = np.array([r["beta"] for r in rows], dtype=float)

    def column(key: str, scale: float = 1.0) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else scale * r[key] for r in rows], dtype=float)

    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=2, width=3.0, height=2.5)
        left, right = axes
        left.plot(beta, column("clean_accuracy", 100), marker="o", markersize=3, linewidth=1.2, label="clean")
        left.plot(beta, column("pgd_accuracy", 100), marker="s", markersize=3, linewidth=1.2,
                  label=f"PGD ε={eps:g}")
        left.set_ylabel("accuracy (%)")
        left.legend(frameon=False, loc="best")
        value = column("value")
        low, high = column("value_ci_low"), column("value_ci_high")
        err = np.vstack([np.nan_to_num(value - low), np.nan_to_num(high - value)])
        right.errorbar(beta, value, yerr=np.clip(err, 0, None) if np.any(err > 0) else None, marker="o",
                       markersize=3, linewidth=1.2, capsize=2, color="C2")
        right.set_ylabel(measure_label)
        for ax in axes:
            ax.set_xlabel("TRADES β")
            ax.set_xticks(beta)
            ax.set_xticklabels([("0\n(natural)" if b == 0 else f"{b:g}") for b in beta])
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def sep_comparison_figure(rows: list[dict], eps: float, title: str = ""):
    """The SEP paper's main comparison as bars: L_e start and end (left, log scale when they span
    more than a factor 20) and clean and adversarial accuracy (right), one group per model.

    ``rows``: dicts with ``label``, ``le_start``, ``le_end``, ``clean_accuracy``, ``pgd_accuracy``
    (fractions; None where not measured).
    """
    import matplotlib

    labels = [r["label"] for r in rows]
    pos = np.arange(len(rows))
    width = 0.38

    def column(key: str, scale: float = 1.0) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else scale * r[key] for r in rows], dtype=float)

    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, axes = new_figure(ncols=2, width=max(3.0, 0.6 * len(rows) + 0.8), height=2.6)
        left, right = axes
        start, end = column("le_start"), column("le_end")
        left.bar(pos - width / 2, start, width, label="L_e start", color="0.65")
        left.bar(pos + width / 2, end, width, label="L_e end", color="C3")
        both = np.concatenate([start, end])
        both = both[np.isfinite(both) & (both > 0)]
        if both.size and both.max() / both.min() > 20:
            left.set_yscale("log")
        left.set_ylabel("explanation loss ×10⁻⁷")
        right.bar(pos - width / 2, column("clean_accuracy", 100), width, label="clean", color="C0")
        right.bar(pos + width / 2, column("pgd_accuracy", 100), width, label=f"PGD ε={eps:g}", color="C1")
        right.set_ylabel("accuracy (%)")
        right.set_ylim(0, 100)
        for ax in axes:
            ax.set_xticks(pos)
            ax.set_xticklabels(labels, rotation=30, ha="right")
            ax.legend(frameon=False, loc="best", fontsize=6)
            ax.grid(alpha=0.3, axis="y")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def sweep_figure(rows: list[dict], field: str, series: str | None = None, title: str = ""):
    """A sweep as the SEP paper's sensitivity tables read: accuracy (clean, PGD) on the left and
    L_e start / end (×10⁻⁷, end with its CI) on the right, against the swept ``field``.

    The swept values sit at evenly spaced positions in sorted order (a λ grid spans both signs and
    several orders of magnitude); ``series`` (a second swept field) gives one line per value.
    Rows without numbers yet (points still running) are left out.
    """
    import matplotlib

    done = [r for r in rows if r.get("clean_accuracy") is not None]
    values = sorted({r[field] for r in done}, key=lambda v: (isinstance(v, str), v))
    pos = {v: i for i, v in enumerate(values)}
    groups = sorted({r.get(series) for r in done}, key=str) if series else [None]
    with matplotlib.rc_context(PUBLICATION_STYLE):
        fig, (left, right) = new_figure(ncols=2, width=max(3.0, 0.45 * len(values) + 1.2), height=2.6)
        for gi, group in enumerate(groups):
            part = sorted((r for r in done if series is None or r.get(series) == group), key=lambda r: pos[r[field]])
            x = np.array([pos[r[field]] for r in part], dtype=float)
            tag = "" if series is None else f" ({series}={group})"

            def column(key: str, scale: float = 1.0) -> np.ndarray:
                return np.array([np.nan if r.get(key) is None else scale * r[key] for r in part], dtype=float)

            left.plot(x, column("clean_accuracy", 100), marker="o", markersize=3, linewidth=1.1, color=f"C{2 * gi}",
                      label="clean" + tag)
            eps = next((r["pgd_eps"] for r in part if r.get("pgd_eps") is not None), None)
            left.plot(x, column("pgd_accuracy", 100), marker="s", markersize=3, linewidth=1.1, linestyle="--",
                      color=f"C{2 * gi + 1}", label=(f"PGD ε={eps:g}" if eps is not None else "PGD") + tag)
            end, low, high = column("le_end"), column("le_end_ci_low"), column("le_end_ci_high")
            err = np.clip(np.vstack([np.nan_to_num(end - low), np.nan_to_num(high - end)]), 0, None)
            right.plot(x, column("le_start"), marker="o", markersize=3, linewidth=1.0, color=f"C{2 * gi}", alpha=0.6,
                       label="L_e start" + tag)
            right.errorbar(x, end, yerr=err, marker="s", markersize=3, linewidth=1.1, capsize=2, color=f"C{2 * gi + 1}",
                           label="L_e end" + tag)
        left.set_ylabel("accuracy (%)")
        right.set_ylabel("explanation loss ×10⁻⁷")
        for ax in (left, right):
            ax.set_xlabel(field)
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels([f"{v:g}" if isinstance(v, float) else str(v) for v in values], rotation=30, ha="right")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, loc="best", fontsize=6)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def cluster_scatter_plotly(coords, groups, highlight, pairs=None, hover=None, highlight_name: str = "prototype",
                           title: str = ""):
    """The interactive clusters map (plotly): one trace per category of ``groups``, ``highlight``ed points as
    outlined diamonds, optional victim → target lines for the index ``pairs``. ``hover`` is an ``(n, 4)`` array
    (image, label, prediction, cluster) that box and lasso selections carry back as ``customdata``."""
    import plotly.colors
    import plotly.graph_objects as go

    coords, groups = np.asarray(coords, dtype=float), np.asarray(groups)
    highlight = np.asarray(highlight, dtype=bool)
    n = coords.shape[0]
    # an int array, not lists: plotly validates lists element by element, and sends an array as one typed array
    # (a selection event returns it as {"0": image, …}, which embedding.indices_from_selection reads)
    hover = np.stack([np.arange(n)] * 4, 1) if hover is None else np.asarray(hover)
    cats = sorted(set(groups.tolist()), key=lambda s: (len(s), s))
    palette = plotly.colors.qualitative.T10 if len(cats) <= 10 else plotly.colors.qualitative.Dark24
    fig = go.Figure()
    if pairs is not None and len(pairs):  # one trace of victim → target segments, separated by gaps
        p = np.asarray(pairs, dtype=int)
        gap = np.full(len(p), np.nan)
        xs = np.stack([coords[p[:, 0], 0], coords[p[:, 1], 0], gap], 1).ravel()
        ys = np.stack([coords[p[:, 0], 1], coords[p[:, 1], 1], gap], 1).ravel()
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(90,90,90,0.35)", width=1),
                                 hoverinfo="skip", name="victim → target", showlegend=True))
    index = np.arange(n)
    for k, cat in enumerate(cats):
        sel = index[groups == cat]
        big = highlight[sel]
        fig.add_trace(go.Scatter(
            x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=cat, customdata=hover[sel],
            marker=dict(color=palette[k % len(palette)], size=np.where(big, 10, 5),
                        symbol=np.where(big, "diamond", "circle"), line=dict(color="black", width=np.where(big, 1, 0))),
            hovertemplate="#%{customdata[0]}  label %{customdata[1]}  predicted %{customdata[2]}  "
                          "cluster %{customdata[3]}<extra></extra>"))
    fig.update_layout(height=540, dragmode="select", margin=dict(l=10, r=10, t=30, b=10), uirevision="clusters",
                      legend=dict(itemsizing="constant"), title=f"{title} · ◆ = {highlight_name} · select with box or lasso")
    return fig


def log_floor(values) -> float | None:
    """The smallest positive value, where a log axis draws values that are 0 (a float underflow) or below;
    None when no value is positive (the axis stays linear)."""
    v = np.asarray(values, dtype=float)
    positive = v[np.isfinite(v) & (v > 0)]
    return float(positive.min()) if positive.size else None
