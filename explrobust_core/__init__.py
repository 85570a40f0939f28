"""explrobust_core: the engine behind the explrobust dashboard.

Pure Python + torch; never imports streamlit. The functions a notebook needs are importable from the
package itself, and each is loaded on first use, so ``import explrobust_core`` stays cheap (torch is
loaded by the submodules that need it)::

    from explrobust_core import load_checkpoint, load_dataset, explanation_maps, run_explanation_attack

    model, card = load_checkpoint("models_zoo/mnist5k/natural.safetensors")
    x, y = load_dataset("mnist5k", "test").batch(range(8))
    maps = explanation_maps(model, x, "gradient")
    result = run_explanation_attack(model, x, "ifia", config={"steps": 20})

``help(explrobust_core.<name>)`` shows each function's arguments, return value and an example. Every error the
package raises on purpose (a bad config, an unknown name, a refused checkpoint) is an :class:`ExplrobustError`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name → submodule that defines it (imported on first access)
_EXPORTS = {
    "load_checkpoint": "zoo",
    "save_checkpoint": "zoo",
    "load_dataset": "data",
    "build_model": "models",
    "attribute": "explain",
    "explanation_maps": "explain",
    "compare_maps": "metrics",
    "explanation_loss": "metrics",
    "run_classification_attack": "attacks.classification",
    "run_explanation_attack": "attacks.explanation",
    "accuracy_vs_eps": "accuracy",
    "evaluate_model": "evaluate",
    "input_landscape": "landscape",
    "sample_pairs": "sampling",
    "train": "training.trainer",
    "TrainConfig": "training.trainer",
    "ExplrobustError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explrobust_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
