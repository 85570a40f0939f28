import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explrobust_core.cli import main
from explrobust_core.explain import explanation_maps
from explrobust_core.zoo import ModelCard, save_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits_convnet, digits_train):
    info = digits_train.info
    card = ModelCard(name="digits_convnet", architecture="convnet", dataset="digits", input_shape=info.input_shape,
                     mean=info.mean, std=info.std, classes=info.classes, epochs=3, seed=0)
    return save_checkpoint(digits_convnet, card, tmp_path_factory.mktemp("zoo"))


def test_import_does_not_pull_streamlit():
    code = ("import sys, explrobust_core, explrobust_core.cli, explrobust_core.explain, explrobust_core.zoo, "
            "explrobust_core.metrics, explrobust_core.data; assert 'streamlit' not in sys.modules, 'streamlit'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_console_script_info_json():
    exe = Path(sys.executable).parent / "explrobust"
    out = subprocess.run([str(exe), "info", "--json"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EXPLROBUST_ZOO": str(REPO / "models_zoo")})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"mnist5k", "digits", "cifar10", "tinyimagenet"} <= {d["name"] for d in report["datasets"]}
    assert {"convnet", "rar_cnn", "resnet18", "wideresnet", "mobilenetv2"} <= {a["name"] for a in report["architectures"]}
    explainers = {e["name"]: e for e in report["explainers"]}
    assert "differentiable" in explainers["integrated_gradients"]["tags"]
    assert "display" in explainers["deeplift"]["tags"]
    assert explainers["integrated_gradients"]["defaults"]["n_steps"] == 50
    assert {"kendall_tau", "spearman_rho", "topk_intersection"} <= {m["name"] for m in report["metrics"]}


def test_explain_writes_pngs_and_the_numbers(tmp_path, checkpoint, digits_convnet, digits_test):
    out = tmp_path / "out"
    code = main(["explain", "--checkpoint", str(checkpoint), "--indices", "0,3,5", "--method", "integrated_gradients",
                 "--n-steps", "16", "--rule", "riemann_middle", "--target", "true", "--out", str(out), "--device", "cpu"])
    assert code == 0
    result = json.loads((out / "explain_integrated_gradients.json").read_text())
    assert result["config"]["n_steps"] == 16 and result["config"]["rule"] == "riemann_middle"
    assert [r["index"] for r in result["images"]] == [0, 3, 5]
    for row in result["images"]:
        png = out / row["png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x, y = digits_test.batch([0, 3, 5])
    expected = explanation_maps(digits_convnet, x, "integrated_gradients", target=y, n_steps=16, rule="riemann_middle")
    got = torch.tensor([r["map"] for r in result["images"]])
    torch.testing.assert_close(got, expected)
    assert [r["label"] for r in result["images"]] == y.tolist()


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown explanation method 'nope'"),
    (["--method", "integrated_gradients", "--n-steps", "0"], "n_steps"),
    (["--indices", "0,99999"], "out of range"),
])
def test_explain_errors_are_one_clear_line(tmp_path, checkpoint, capsys, args, message):
    base = {"--checkpoint": str(checkpoint), "--indices": "0", "--out": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["explain"] + [part for kv in base.items() for part in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["explain", "--checkpoint", str(tmp_path / "none.safetensors"), "--indices", "0",
                 "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_method_help_lists_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--method", "smoothgrad", "--help"])
    text = capsys.readouterr().out
    assert "--n-samples" in text and "--stdev" in text and "--n-steps" not in text


def test_attack_classifier_command(tmp_path, checkpoint, capsys):
    out = tmp_path / "pgd.json"
    assert main(["attack-classifier", "--checkpoint", str(checkpoint), "--n-images", "40", "--eps", "0.1",
                 "--steps", "5", "--eps-list", "0.05,0.2", "--minimal-eps", "0.3", "--json", str(out),
                 "--csv", str(tmp_path / "pgd.csv")]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["eps"] == 0.1 and result["config"]["steps"] == 5
    assert [row["eps"] for row in result["extra"]["accuracy_vs_eps"]] == [0.05, 0.2]
    assert len(result["per_image"]["minimal_flip_eps"]) == 40
    assert (tmp_path / "pgd.csv").read_text().count("\n") == 41
    assert "adversarial_accuracy" in capsys.readouterr().out


def test_attack_explanation_command(tmp_path, checkpoint):
    out = tmp_path / "ae"
    assert main(["attack-explanation", "--checkpoint", str(checkpoint), "--indices", "0,1,2", "--steps", "3",
                 "--k", "10", "--eval-k", "10", "--out", str(out)]) == 0
    result = json.loads((out / "ifia.json").read_text())
    assert result["config"]["k"] == 10 and "softplus_view" in result["config"]["attack_model"]
    assert len(list(out.glob("ifia_test_*.png"))) == 3
    assert main(["attack-explanation", "--checkpoint", str(checkpoint), "--indices", "0,1", "--target-index", "7",
                 "--steps", "4", "--out", str(out)]) == 0
    targeted = json.loads((out / "targeted.json").read_text())
    assert targeted["per_image"]["target_index"] == [7, 7]
    assert "explanation_loss_end" in targeted["summary"]


def test_evaluate_command(tmp_path, checkpoint):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--n-images", "30", "--eps-list", "[0.1]",
                 "--pgd-steps", "3", "--n-explanation-images", "4", "--ifia-steps", "2", "--ifia-k", "10",
                 "--ifia-eval-k", "10", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["pgd"]["steps"] == 3 and result["config"]["ifia"]["k"] == 10
    assert result["summary"]["explanation"]["n_images"] == 4


@pytest.mark.parametrize("argv,message", [
    (["attack-explanation", "--indices", "0", "--k", "999", "--out", "X"], "larger than the map"),
    (["attack-explanation", "--indices", "0", "--attack", "targeted", "--out", "X"], "needs --target-indices"),
    (["attack-classifier", "--attack", "pgd", "--eps", "-1"], "eps"),
    (["evaluate", "--preset", "rar_mnist", "--ifia-steps", "0"], "ifia.steps"),
])
def test_attack_errors_are_one_line(tmp_path, checkpoint, capsys, argv, message):
    argv = [a.replace("X", str(tmp_path)) for a in argv]
    assert main(argv[:1] + ["--checkpoint", str(checkpoint)] + argv[1:]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("error", [
    "ConfigError", "UnknownNameError", "MissingExtraError", "CheckpointError", "UploadError", "JobNotFound",
    "JobStoreError", "DatasetNotFoundError", "NotDifferentiableError", "UnreadableFileError", "RayUnavailable"])
def test_a_project_error_is_one_line_and_a_bug_is_a_traceback(error, monkeypatch, capsys):
    """Every error class of the project derives from ExplrobustError (keeping its built-in base) and is printed as
    one line with exit code 2; any other exception is a bug: its traceback, exit code 1."""
    from explrobust_core import ExplrobustError
    from explrobust_core.cli import info

    modules = ["registry", "zoo", "uploads", "jobs", "data", "explain", "io", "ray_cluster"]
    found = [getattr(__import__(f"explrobust_core.{m}", fromlist=[error]), error, None) for m in modules]
    cls = next(c for c in found if c is not None)
    assert issubclass(cls, ExplrobustError)

    def fail():
        raise cls("the message\nsaid in two lines")

    monkeypatch.setattr(info, "info_report", fail)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err == "explrobust: error: the message said in two lines\n"

    def bug():
        raise RuntimeError("an internal slip")

    monkeypatch.setattr(info, "info_report", bug)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: an internal slip" in err
    assert "in bug" in err and err.rstrip().endswith("please report it with the traceback above")


def test_out_of_memory_is_one_line_not_a_bug(monkeypatch, capsys):
    import torch

    from explrobust_core.cli import info, main

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(info, "info_report", out_of_memory)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ran out of memory" in err and "Traceback" not in err


def test_the_error_base_keeps_the_builtin_bases():
    from explrobust_core.data import DatasetNotFoundError
    from explrobust_core.registry import ConfigError, MissingExtraError, UnknownNameError

    assert issubclass(ConfigError, ValueError) and issubclass(MissingExtraError, ImportError)
    assert issubclass(UnknownNameError, KeyError) and issubclass(UnknownNameError, ValueError)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert str(UnknownNameError("unknown thing 'x'")) == "unknown thing 'x'"  # not quoted as a KeyError would be
