"""The curated public API: ``import explrobust_core`` is cheap and streamlit-free, every exported name resolves
and carries Args/Returns/Example, and the examples run."""

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

import explrobust_core

REPO = Path(__file__).resolve().parent.parent


def test_importing_the_package_loads_neither_torch_nor_streamlit_nor_a_submodule():
    code = ("import sys, explrobust_core\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'streamlit', 'numpy', 'pandas')"
            " or m.startswith('explrobust_core.'))\n"
            "print(heavy)\n"
            "explrobust_core.load_dataset\n"  # the first access imports its module, and only then
            "print('explrobust_core.data' in sys.modules, 'streamlit' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True False"


def test_every_exported_name_resolves_and_is_documented():
    assert explrobust_core.__all__ and set(explrobust_core.__all__) <= set(dir(explrobust_core))
    for name in explrobust_core.__all__:
        value = getattr(explrobust_core, name)
        assert value.__name__ == name and value.__module__.startswith("explrobust_core."), name
        if callable(value) and not isinstance(value, type):  # the functions (TrainConfig documents its fields)
            doc = value.__doc__ or ""
            assert all(section in doc for section in ("Args:", "Returns:", "Example:")), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        explrobust_core.nope  # noqa: B018


def test_the_examples_run(tmp_path, monkeypatch):
    """Each example (those not marked SKIP) runs as written, from a folder that holds the shipped zoo."""
    import torch

    from explrobust_core.clusters import cluster_pairs  # the Clusters view's core, documented the same way

    (tmp_path / "models_zoo").symlink_to(REPO / "models_zoo")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model, card = explrobust_core.load_checkpoint(REPO / "models_zoo" / "mnist5k" / "natural.safetensors", "cpu")
    x, y = explrobust_core.load_dataset("mnist5k", "test").batch(range(0, 1000, 125))
    names = {name: getattr(explrobust_core, name) for name in explrobust_core.__all__} | {"cluster_pairs": cluster_pairs}
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for obj in names.values():
        for test in finder.find(obj, globs={**names, "model": model, "card": card, "x": x, "y": y}):
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 10
