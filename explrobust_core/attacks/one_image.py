"""One explanation attack on one image, with everything a side-by-side view needs (the Attack lab's rows).

:func:`attack_image` runs any registered explanation attack on a single image and returns plain numbers
and CPU tensors: predictions and confidences before and after, the per-image metrics, the trajectory of
every recorded step, the images and the maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import device_of
from .explanation import Progress, needs_targets, run_explanation_attack





def attack_image(model: nn.Module, image: torch.Tensor, attack: str, config: dict[str, Any],
                 target: torch.Tensor | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run explanation attack ``attack`` on one image ``(1, C, H, W)`` (toward ``target`` when it needs one).

    Returns a dict: ``config`` (resolved), ``summary``, ``per_image`` (this image's value of each column),
    ``trajectory`` (per recorded step), ``pred_before``/``conf_before``/``pred_after``/``conf_after``,
    ``image``, ``adversarial``, ``target_image`` and the ``*_map`` tensors (CPU), and ``seconds``.
    """
    device = device_of(model)
    x = image.to(device)
    x_t = target.to(device) if target is not None and needs_targets(attack) else None
    result = run_explanation_attack(model, x, attack, config=config, target_images=x_t, progress=progress)
    adv = result.tensors["adversarial"]
    with torch.no_grad():
        before = torch.softmax(model(x), 1)[0].cpu()
        after = torch.softmax(model(adv), 1)[0].cpu()
    row = result.to_dict()
    traj = row["extra"].get("trajectory", {"step": []})
    return {
        "attack": attack, "config": row["config"], "summary": row["summary"],
        "per_image": {key: values[0] for key, values in row["per_image"].items()},
        "trajectory": {key: (values if key == "step" else [v[0] for v in values]) for key, values in traj.items()},
        "pred_before": int(before.argmax()), "conf_before": float(before.max()),
        "pred_after": int(after.argmax()), "conf_after": float(after.max()),
        "image": x[0].cpu(), "adversarial": adv[0].cpu(), "target_image": None if x_t is None else x_t[0].cpu(),
        **{name: t[0].cpu() for name, t in result.tensors.items() if name.endswith("_map") and t is not None},
        "seconds": result.seconds,
    }
