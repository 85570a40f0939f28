"""Hardening: malicious checkpoints and cards are refused and run nothing; request sizes are capped;
user-given names cannot leave their directories.

Every refusal test pairs the refusal with a control that shows the crafted input is real (the
payload does run when unpickled naively, torch does accept the compressed archive, …), so a test
fails if the protection it covers is removed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import annotated_types
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from explrobust_core import zoo
from explrobust_core.io import check_name, sha256_file
from explrobust_core.registry import Config, ConfigError
from explrobust_core.zoo import (CheckpointError, ModelCard, build_from_card, import_state_dict, list_checkpoints,
                                 load_checkpoint, read_card, read_foreign_state_dict, save_checkpoint,
                                 state_dict_from_bytes)

CLASSES = [str(i) for i in range(10)]
SMALL = {"width1": 4, "width2": 4, "hidden": 8}


def card_for(name="m1", **kw) -> ModelCard:
    return ModelCard(name=name, architecture="convnet", arch_config=kw.pop("arch_config", SMALL), dataset="digits",
                     input_shape=(1, 8, 8), mean=[0.3], std=[0.4], classes=CLASSES, **kw)


def saved(tmp_path, name="m1") -> Path:
    card = card_for(name)
    torch.manual_seed(0)
    return save_checkpoint(build_from_card(card), card, tmp_path)


def rewrite_weights(path: Path, state: dict[str, torch.Tensor] | None = None, blob: bytes | None = None,
                    keep_checksum: bool = True) -> None:
    """Replace the weights of a saved checkpoint and make its card's checksum agree (the attacker controls both)."""
    path.write_bytes(blob if blob is not None else safetensors_bytes(state))
    card = json.loads(path.with_suffix(".json").read_text())
    card["weights_sha256"] = sha256_file(path) if keep_checksum else None
    path.with_suffix(".json").write_text(json.dumps(card))


# --------------------------------------------------------------------------- code in pickles


class Payload:
    """Unpickling this calls ``func(*args)``: a stand-in for any code an attacker wants to run."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, (f"touch {marker}",)),
        "subprocess": Payload(subprocess.call, ([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"],)),
        "eval": Payload(eval, (f"open({str(marker)!r}, 'w').close()",)),
        "Path.touch": Payload(Path.touch, (marker,)),
    }


def torch_zip_with_pickle(pickled: bytes) -> bytes:
    """A .pt-looking zip (torch.save's layout) whose data.pkl is the attacker's pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["os.system", "subprocess", "eval", "Path.touch"])
def test_code_in_a_pt_file_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    evil = payloads(marker)[kind]
    files = {}
    buf = io.BytesIO()
    torch.save({"features.0.weight": torch.zeros(2), "x": evil}, buf)  # torch.save's own zip format
    files["torch.save"] = buf.getvalue()
    files["crafted zip"] = torch_zip_with_pickle(pickle.dumps({"w": evil}, protocol=2))
    files["bare pickle"] = pickle.dumps({"w": evil})  # an old-style .pt is a bare pickle stream
    buf = io.BytesIO()
    torch.save({"w": evil}, buf, _use_new_zipfile_serialization=False)
    files["legacy torch.save"] = buf.getvalue()
    for label, blob in files.items():
        for suffix in (".pt", ".pth", ".safetensors"):
            path = tmp_path / f"evil{suffix}"
            path.write_bytes(blob)
            with pytest.raises(CheckpointError):
                read_foreign_state_dict(path)
            with pytest.raises(CheckpointError):
                import_state_dict(path, card_for(), tmp_path / "zoo")
            assert not marker.exists(), f"{label} as {suffix} ran its payload"
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())
    # control: the same bytes, loaded naively, do run the payload, so this test can fail
    pickle.loads(pickle.dumps(evil))
    assert marker.exists()


def test_the_refusal_rests_on_weights_only(tmp_path, monkeypatch):
    """With torch.load's weights_only switched off, the same file runs its payload: the guard is real."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1), "x": payloads(marker)["Path.touch"]}, buf)
    with pytest.raises(CheckpointError, match="refused"):
        state_dict_from_bytes(buf.getvalue(), ".pt", "evil.pt")
    assert not marker.exists()
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, **kw: real_load(f, **{**kw, "weights_only": False}))
    with pytest.raises(CheckpointError):  # it is not a state dict either, but the damage is done
        state_dict_from_bytes(buf.getvalue(), ".pt", "evil.pt")
    assert marker.exists()


def test_legacy_and_compressed_torch_files_are_refused_before_torch_reads_them(tmp_path):
    state = {"w": torch.arange(4.0)}
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a zip-format torch file"):
        state_dict_from_bytes(legacy.getvalue(), ".pt")
    # a zip with deflated entries: a small upload that inflates to any size; torch.save never writes one
    plain = io.BytesIO()
    torch.save(state, plain)
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError, match="compressed entry"):
        state_dict_from_bytes(deflated.getvalue(), ".pt")
    # controls: torch itself accepts both, so the refusals are ours
    assert torch.equal(torch.load(io.BytesIO(deflated.getvalue()), weights_only=True)["w"], state["w"])
    assert torch.equal(torch.load(io.BytesIO(legacy.getvalue()), weights_only=True)["w"], state["w"])
    # and a genuine torch.save state dict still loads
    assert torch.equal(state_dict_from_bytes(plain.getvalue(), ".pt")["w"], state["w"])


def test_renamed_and_broken_zips_are_clear_errors(tmp_path):
    good = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, good)
    blob = good.getvalue()
    cases = {
        "empty zip": _zip({}),
        "zip of text": _zip({"readme.txt": b"hello"}),
        "truncated": blob[: len(blob) // 2],
        "garbage after magic": b"PK\x03\x04" + os.urandom(300),
        "data.pkl only": torch_zip_with_pickle(pickle.dumps({"w": [1, 2]}, protocol=2)),
    }
    for label, data in cases.items():
        with pytest.raises(CheckpointError):
            state_dict_from_bytes(data, ".pt", label)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------- safetensors


def test_truncated_safetensors_are_refused(tmp_path):
    path = saved(tmp_path)
    blob = path.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    for cut in (4, 8, 8 + header_len // 2, 8 + header_len + 3, len(blob) - 1):
        rewrite_weights(path, blob=blob[:cut], keep_checksum=False)
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            load_checkpoint(path, "cpu")
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            state_dict_from_bytes(blob[:cut], ".safetensors")


def test_safetensors_headers_that_lie_are_refused(tmp_path):
    def forged(header: dict, data: bytes = b"\0" * 8, length: int | None = None) -> bytes:
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text) if length is None else length) + text + data

    cases = [
        forged({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 8]}}),  # claims 4 TB in 8 bytes
        forged({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2**40]}}),
        forged({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, length=2**62),  # absurd header size
        forged({"w": {"dtype": "NOPE", "shape": [2], "data_offsets": [0, 8]}}),
        forged({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}),
        forged({"w": [1, 2, 3]}),
    ]
    for blob in cases:
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            state_dict_from_bytes(blob, ".safetensors", "forged")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int32, torch.uint8])
def test_weights_of_the_wrong_dtype_are_refused(tmp_path, dtype):
    path = saved(tmp_path)
    model, _ = load_checkpoint(path, "cpu")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    rewrite_weights(path, state)
    # the checksum matches and the shapes match: only the dtype check stands between this file and a
    # silent conversion in load_state_dict
    with pytest.raises(CheckpointError, match="dtype mismatches"):
        load_checkpoint(path, "cpu")


def test_weights_of_the_wrong_shape_or_with_nan_are_refused(tmp_path):
    path = saved(tmp_path)
    model, _ = load_checkpoint(path, "cpu")
    state = dict(model.state_dict())
    key = next(k for k, v in state.items() if v.dim() == 2)
    rewrite_weights(path, {**state, key: state[key].T.contiguous()})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(path, "cpu")
    for bad in (float("nan"), float("inf")):
        poisoned = state[key].clone()
        poisoned[0, 0] = bad
        rewrite_weights(path, {**state, key: poisoned})
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            load_checkpoint(path, "cpu")
    # a foreign import of NaN weights is refused too, and writes nothing
    torch.save({**state, key: poisoned}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        import_state_dict(tmp_path / "nan.pt", card_for("imported"), tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "imported.safetensors").exists()


# --------------------------------------------------------------------------- cards


def _card_dict() -> dict:
    return card_for().model_dump(mode="json")


BAD_CARDS = {
    "name is a number": {"name": 5},
    "classes is a string": {"classes": "0123456789"},
    "one class": {"classes": ["a"]},
    "negative size": {"input_shape": [1, -8, 8]},
    "absurd size": {"input_shape": [1, 10**9, 8]},
    "four dims": {"input_shape": [1, 8, 8, 8]},
    "mean is text": {"mean": ["a"]},
    "mean is NaN": {"mean": [float("nan")]},
    "std is infinite": {"std": [float("inf")]},
    "std is zero": {"std": [0.0]},
    "future schema": {"schema_version": 2},
    "unknown field": {"evil": True},
    "unknown architecture": {"architecture": "resnet1000"},
    "arch option of the wrong type": {"arch_config": {"width1": "wide"}},
    "arch option out of range": {"arch_config": {"width1": 10**9}},
    "epochs negative": {"epochs": -1},
    "bad checksum format": {"weights_sha256": "abc"},
    "huge notes": {"notes": "x" * 20_000},
    # strict types: lax parsing would coerce these into numbers
    "a bool in input_shape": {"input_shape": [True, 8, 8]},
    "text in input_shape": {"input_shape": ["1", 8, 8]},
    "a bool as mean": {"mean": [True]},
    "arch option as text": {"arch_config": {"width1": "4"}},
    "seed unbounded": {"seed": 2**70},
    "seed negative": {"seed": -1},
    # positive and finite in Python, but 0 (or a normalisation that overflows) in the model's float32
    "std is 0 in float32": {"std": [1e-320]},
    "absurd mean": {"mean": [1e300]},
}


@pytest.mark.parametrize("label", list(BAD_CARDS))
def test_cards_with_wrong_types_or_values_are_refused(tmp_path, label):
    path = saved(tmp_path)
    data = {**_card_dict(), **BAD_CARDS[label]}
    text = json.dumps(data)  # json.dumps writes NaN / Infinity literals, which a card parser might accept
    path.with_suffix(".json").write_text(text)
    with pytest.raises(CheckpointError, match="model card"):
        load_checkpoint(path, "cpu")
    listing = list_checkpoints(tmp_path)  # a broken card is listed with its error, the listing survives
    assert len(listing) == 1 and listing[0].card is None and listing[0].error


def test_nan_in_a_card_would_poison_every_prediction(tmp_path):
    """Why finite mean/std matter: a NaN mean makes the Normalize layer output NaN for every input."""
    from explrobust_core.models import build_model

    model = build_model("convnet", input_shape=(1, 8, 8), num_classes=10, mean=[float("nan")], std=[0.4], config=SMALL)
    assert torch.isnan(model(torch.rand(2, 1, 8, 8))).all()
    with pytest.raises(ValueError, match="finite"):
        ModelCard(**{**_card_dict(), "mean": [float("nan")]})


def test_cards_that_are_not_cards(tmp_path):
    path = saved(tmp_path)
    card = path.with_suffix(".json")
    cases = {
        "not utf-8": b"\xff\xfe\x00garbage",
        "not json": b"{\"name\": ",
        "a list": b"[1, 2, 3]",
        "deeply nested": (b"{\"metrics\": {\"m\": " + b"[" * 100_000 + b"]" * 100_000 + b"}}"),
        "name of another file": json.dumps({**_card_dict(), "name": "other"}).encode(),
    }
    for label, data in cases.items():
        card.write_bytes(data)
        with pytest.raises(CheckpointError):
            read_card(card)


def test_oversized_files_are_refused_without_reading_them(tmp_path, monkeypatch):
    path = saved(tmp_path)
    card = path.with_suffix(".json")
    with open(card, "r+b") as f:  # sparse: over the limit on disk without writing a megabyte
        f.truncate(zoo.CARD_MAX_BYTES + 1)
    with pytest.raises(CheckpointError, match="over the .*-byte limit"):
        read_card(card)
    path2 = saved(tmp_path, "m2")
    with open(path2, "r+b") as f:
        f.truncate(zoo.WEIGHTS_MAX_BYTES + 1)
    big_pt = tmp_path / "big.pt"
    with open(big_pt, "wb") as f:
        f.truncate(zoo.WEIGHTS_MAX_BYTES + 1)

    real_read = Path.read_bytes

    def no_reading(self, *a, **k):
        if self.stat().st_size > zoo.CARD_MAX_BYTES:
            raise AssertionError(f"{self} was read although it is over the limit")
        return real_read(self, *a, **k)

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(CheckpointError, match="over the .*-byte limit"):
        load_checkpoint(path2, "cpu")
    with pytest.raises(CheckpointError, match="over the .*-byte limit"):
        read_foreign_state_dict(big_pt)


def test_a_card_cannot_make_us_allocate_an_absurd_model(tmp_path, monkeypatch):
    """A few bytes of JSON describing a 35 TB ConvNet are refused before any allocation."""
    path = saved(tmp_path)
    data = {**_card_dict(), "input_shape": [1, 4096, 4096], "arch_config": {"width2": 1024, "hidden": 8192}}
    path.with_suffix(".json").write_text(json.dumps(data))
    card = read_card(path)  # the card itself is valid: only its model is absurd
    built = []
    real_build = zoo.build_model

    def spy(*a, **k):
        built.append(torch.empty(0).device)  # the default device at the time of the build
        return real_build(*a, **k)

    monkeypatch.setattr(zoo, "build_model", spy)
    with pytest.raises(CheckpointError, match="GiB limit"):
        load_checkpoint(path, "cpu")
    with pytest.raises(CheckpointError, match="GiB limit"):
        build_from_card(card)
    assert built and all(d.type == "meta" for d in built), "a real (non-meta) build was attempted"


# --------------------------------------------------------------------------- caps on request sizes


def _config_classes() -> list[type[Config]]:
    import explrobust_core.attacks.classification  # noqa: F401
    import explrobust_core.attacks.explanation  # noqa: F401
    import explrobust_core.evaluate  # noqa: F401
    import explrobust_core.explain  # noqa: F401
    import explrobust_core.landscape  # noqa: F401
    import explrobust_core.metrics  # noqa: F401
    import explrobust_core.models  # noqa: F401
    import explrobust_core.sampling  # noqa: F401
    import explrobust_core.training.objectives  # noqa: F401
    import explrobust_core.training.trainer  # noqa: F401

    found, todo = set(), [Config]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _mentions_int(annotation) -> bool:
    return annotation is int or any(_mentions_int(a) for a in typing.get_args(annotation))


def test_every_integer_and_list_option_of_every_config_has_an_upper_bound():
    """Steps, batch sizes, numbers of images, grid sizes, k, seeds…: one request cannot ask for the moon."""
    unbounded = []
    classes = _config_classes()
    assert len(classes) > 20
    for cls in classes:
        for name, f in cls.model_fields.items():
            is_list = typing.get_origin(f.annotation) is list
            if not (_mentions_int(f.annotation) or is_list):
                continue
            bounds = (annotated_types.Le, annotated_types.Lt) if not is_list else (annotated_types.MaxLen,)
            if not any(isinstance(m, bounds) for m in f.metadata):
                unbounded.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert not unbounded, "options without an upper bound: " + ", ".join(unbounded)


def _upper(cls: type[Config], field: str):
    for m in cls.model_fields[field].metadata:
        if isinstance(m, annotated_types.Le):
            return m.le, True
        if isinstance(m, annotated_types.Lt):
            return m.lt, False
    raise AssertionError(f"{cls.__name__}.{field} has no upper bound")


CAPPED = [
    ("explrobust_core.attacks.classification", "PGDConfig", ["steps", "restarts", "seed"]),
    ("explrobust_core.attacks.classification", "AutoAttackConfig", ["batch_size", "seed"]),
    ("explrobust_core.attacks.explanation", "IFIAConfig", ["steps", "restarts", "k", "eval_k", "seed"]),
    ("explrobust_core.attacks.explanation", "TargetedConfig", ["steps", "record_every", "seed"]),
    ("explrobust_core.landscape", "LandscapeConfig", ["points", "batch_size", "k", "seed"]),
    ("explrobust_core.landscape", "CurvatureConfig", ["n_samples", "iterations", "seed"]),
    ("explrobust_core.sampling", "SampleConfig", ["n_candidates", "n_pairs", "k", "seed"]),
    ("explrobust_core.way_stability", "WayStabilityConfig", ["n_pairs", "n_candidates", "k", "reference_pairs"]),
    ("explrobust_core.evaluate", "EvaluationConfig", ["n_images", "batch_size", "n_explanation_images",
                                                      "attack_batch_size", "seed"]),
    ("explrobust_core.training.trainer", "TrainConfig", ["epochs", "batch_size", "eval_images", "eval_pgd_steps",
                                                         "max_train_images", "seed"]),
    ("explrobust_core.explain", "IntegratedGradientsConfig", ["n_steps", "internal_batch_size", "seed"]),
    ("explrobust_core.explain", "SmoothGradConfig", ["n_samples", "internal_batch_size", "seed"]),
]


@pytest.mark.parametrize("module,cls_name,fields", CAPPED, ids=[c[1] for c in CAPPED])
def test_over_cap_values_are_refused_with_the_field_named(module, cls_name, fields):
    import importlib

    from pydantic import ValidationError

    from explrobust_core.registry import format_validation_error

    cls = getattr(importlib.import_module(module), cls_name)
    required = {"TrainConfig": {"name": "run"}, "SampleConfig": {"way": 1}}.get(cls_name, {})
    for field in fields:
        top, inclusive = _upper(cls, field)
        over = top + 1 if inclusive else top
        if field == "points":
            over += over % 2 == 0  # points must be odd anyway: stay odd so the cap is what refuses it
        try:  # the cap itself is allowed by the bound (another rule may still object to it)
            cls(**required, **{field: top if inclusive else top - 1})
        except ValidationError as err:
            assert not [e for e in err.errors() if e["loc"] == (field,) and e["type"].startswith("less_than")]
        with pytest.raises(ValidationError) as info:
            cls(**required, **{field: over})
        message = format_validation_error(info.value, cls_name)
        assert message.startswith(f"invalid {cls_name}: {field}:") and "less than" in message, message


def test_registry_configs_name_the_offending_field():
    from explrobust_core.attacks.explanation import EXPLANATION_ATTACKS
    from explrobust_core.explain import EXPLAINERS

    with pytest.raises(ConfigError, match=r"n_steps: Input should be less than or equal to"):
        EXPLAINERS.get("integrated_gradients").make_config({"n_steps": 10**9})
    name = EXPLANATION_ATTACKS.names()[0]
    with pytest.raises(ConfigError, match=r"steps: Input should be less than or equal to"):
        EXPLANATION_ATTACKS.get(name).make_config({"steps": 10**9})


# --------------------------------------------------------------------------- names and paths

TRAVERSALS = ["../evil", "..", ".", "", "a/b", "a\\b", "/etc/passwd", "~root", ".hidden", "x\n", "x\x00y", "a..b",
              "C:evil", "x" * 65, "-rf", " x", "x ", "ñame", "ｘ", "a\u2028b", "run/../../etc"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_check_name_refuses_anything_that_could_leave_a_directory(name):
    with pytest.raises(ValueError, match="invalid"):
        check_name(name)


def test_names_that_pass_stay_in_their_directory(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = tmp_path.resolve()

    @settings(max_examples=300, deadline=None)
    @given(st.text(min_size=0, max_size=70))
    def prop(name):
        try:
            check_name(name)
        except ValueError:
            return
        target = (base / name).resolve()
        assert target.parent == base and target.name == name and "\n" not in name

    prop()


def test_checkpoint_writes_check_the_name_even_when_validation_was_bypassed(tmp_path):
    good = card_for("ok")
    evil = ModelCard.model_construct(**{**good.model_dump(), "name": "../../escaped"})
    model = build_from_card(good)
    with pytest.raises(ValueError, match="invalid checkpoint name"):
        save_checkpoint(model, evil, tmp_path / "zoo")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="invalid checkpoint name"):
        import_state_dict(tmp_path / "w.pt", evil, tmp_path / "zoo")
    assert not list(tmp_path.rglob("escaped*"))


def test_run_and_export_names_are_checked(tmp_path):
    from explrobust_core.training.trainer import TrainConfig

    for name in ("../x", "a/b", "x\n"):
        with pytest.raises(ValueError, match="invalid run name"):
            TrainConfig(name=name)
    repo = str(Path(__file__).resolve().parent.parent)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from pages import ui

    for stem in ("../x", "a/b", "/tmp/x"):
        with pytest.raises(ValueError, match="invalid export name"):
            ui.downloads(stem, data={"a": 1})


def test_job_names_and_ids_are_checked(tmp_path):
    from explrobust_core.jobs import JobStore, parse_spec

    for spec, field in [({"kind": "train", "train": {"name": "../../escape"}}, "train.name"),
                        ({"kind": "train", "train": {"name": "ok", "dataset": "../x"}}, "train"),
                        ({"kind": "evaluate", "model": "../../etc/passwd"}, "model"),
                        ({"kind": "evaluate", "model": "mnist5k/../natural"}, "model"),
                        ({"kind": "evaluate", "model": "/abs/natural"}, "model")]:
        with pytest.raises(ConfigError, match=field):
            parse_spec(spec)
    store = JobStore(tmp_path / "runs")
    for job_id in ("../x", "a/b", ".."):
        with pytest.raises(ValueError, match="invalid job id"):
            store.job_dir(job_id)
    assert not [p for p in tmp_path.rglob("*") if not p.resolve().is_relative_to((tmp_path / "runs").resolve())]


# =========================================================================== round two (issue 15)
# Each class of defect found by the second adversarial pass, driven through the CLI in-process where the
# user met it: a refusal is exit 2 with one line on stderr (no traceback) and nothing written.


def run_cli(capsys, *argv) -> tuple[int, str]:
    from explrobust_core.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse refusals exit by themselves
        code = exit_.code
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "errors.pydantic.dev" not in err, err
    assert len(err.strip().splitlines()) == 1, f"not one line: {err!r}"
    for needle in needles:
        assert needle in err, (needle, err)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Private runs folder, user zoo and shipped zoo (a copy with one digits checkpoint and a pair file)."""
    monkeypatch.setenv("EXPLROBUST_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "user_zoo"))
    monkeypatch.setenv("EXPLROBUST_ZOO", str(tmp_path / "shipped"))
    saved(tmp_path / "shipped" / "digits", "natural")
    (tmp_path / "shipped" / "digits" / "pairs_way1.json").write_text('{"shipped": true}')
    return tmp_path


def within(seconds: float, fn, unblock: Path | None = None):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    import threading

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=_call(fn)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:  # a reader blocked on a FIFO wakes up once a writer opens it
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"still running after {seconds} s (a read without a limit?)")
    if isinstance(box["value"], BaseException):
        raise box["value"]
    return box["value"]


def _call(fn):
    try:
        return fn()
    except BaseException as err:  # noqa: BLE001 - handed back to the test thread
        return err


def test_non_regular_files_are_refused_before_reading_and_one_bad_entry_never_breaks_the_listing(
        isolated, monkeypatch, capsys):
    """A card or weights that is a device (st_size 0, endless data), a FIFO (blocks) or a directory."""
    zoo = isolated / "user_zoo" / "digits"
    good = saved(zoo, "good")
    fifo = zoo / "fifo.json"
    os.mkfifo(fifo)
    (zoo / "device.json").symlink_to("/dev/null")  # /dev/zero in the report; /dev/null cannot eat the memory
    for stem in ("fifo", "device"):
        (zoo / f"{stem}.safetensors").write_bytes(good.read_bytes())
    (zoo / "folder.json").write_text(good.with_suffix(".json").read_text().replace('"good"', '"folder"'))
    (zoo / "folder.safetensors").mkdir()
    for stem, what in (("fifo", "a device, FIFO or socket"), ("device", "a device, FIFO or socket"),
                       ("folder", "a directory")):
        with pytest.raises(CheckpointError, match=f"is {what}, not a regular file"):
            within(10, lambda: load_checkpoint(zoo / f"{stem}.safetensors", "cpu"), unblock=fifo)
    listing = within(10, lambda: list_checkpoints(zoo), unblock=fifo)
    assert {e.path.stem: e.error is None for e in listing} == {"good": True, "fifo": False, "device": False,
                                                                "folder": True}
    code, err = within(30, lambda: run_cli(capsys, "info", "--json"), unblock=fifo)
    assert code == 0, err
    code, err = run_cli(capsys, "explain", "--checkpoint", zoo / "folder.safetensors", "--indices", "0",
                        "--out", isolated / "out")
    assert_refused(code, err, "not a regular file")
    (zoo / "dircard.safetensors").write_bytes(good.read_bytes())
    (zoo / "dircard.json").mkdir()
    code, err = run_cli(capsys, "explain", "--checkpoint", zoo / "dircard.safetensors", "--indices", "0",
                        "--out", isolated / "out")
    assert_refused(code, err, "is a directory")
    assert not (isolated / "out").exists()


def test_a_model_that_would_output_nan_never_enters_a_zoo(tmp_path):
    from explrobust_core.io import atomic_write_json

    with pytest.raises(ValueError, match="float32"):
        ModelCard(**{**_card_dict(), "std": [1e-320]})
    # the card's mean/std against the weights' own normalisation buffers
    path = saved(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**card, "mean": [0.5]}))
    with pytest.raises(CheckpointError, match="normalise with mean"):
        load_checkpoint(path, "cpu")
    model = build_from_card(card_for("other"))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="normalise with mean"):
        import_state_dict(tmp_path / "w.pt", card_for("other").model_copy(update={"mean": [0.9]}), tmp_path / "zoo")
    # finite weights whose logits overflow: refused by the smoke test, on saving and on loading
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1e30)
    with pytest.raises(CheckpointError, match="NaN or infinite logits"):
        save_checkpoint(model, card_for("other"), tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() or not list((tmp_path / "zoo").iterdir())
    path.with_suffix(".json").write_text(json.dumps(card))
    rewrite_weights(path, {k: v for k, v in model.state_dict().items()})
    with pytest.raises(CheckpointError, match="NaN or infinite logits"):
        load_checkpoint(path, "cpu")
    # JSON never holds NaN/Infinity literals (strict readers refuse them)
    out = atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5]})

    def strict(token):
        raise AssertionError(f"non-standard JSON literal {token}")

    assert json.loads(out.read_text(), parse_constant=strict) == {"a": None, "b": [None, 1.5]}


def _fill_store(runs: Path) -> list[str]:
    from explrobust_core.jobs import JobStore, parse_spec

    store = JobStore(runs)
    ids = [store.add(parse_spec({"kind": "train", "train": {"name": f"j{i}", "dataset": "digits"}})).id for i in (1, 2)]
    import sqlite3

    db = sqlite3.connect(store.path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, so cutting it loses data
    db.close()
    return ids


def test_a_damaged_or_lost_job_store_says_how_to_recover_and_is_rebuilt_from_the_job_folders(tmp_path, capsys):
    runs = tmp_path / "runs"
    ids = _fill_store(runs)
    store_file = runs / "jobs.sqlite"
    with open(store_file, "r+b") as f:
        f.truncate(store_file.stat().st_size // 2)
    for argv in (("list",), ("show", ids[0]), ("cancel", ids[0])):
        code, err = run_cli(capsys, "jobs", "--runs", runs, *argv)
        assert_refused(code, err, "damaged", "rebuild-store")
    code, err = run_cli(capsys, "jobs", "--runs", runs, "rebuild-store")
    assert code == 0, err
    assert list(runs.glob("jobs.sqlite.damaged-*")), "the damaged file is kept"
    code, _ = run_cli(capsys, "jobs", "--runs", runs, "show", ids[1])
    assert code == 0
    # a 0-byte store would open as a new, empty one and silently forget every job
    store_file.write_bytes(b"")
    for side in ("-wal", "-shm"):
        Path(f"{store_file}{side}").unlink(missing_ok=True)
    code, err = run_cli(capsys, "jobs", "--runs", runs, "list")
    assert_refused(code, err, "empty", "2 job folders", "rebuild-store")
    assert run_cli(capsys, "jobs", "--runs", runs, "rebuild-store")[0] == 0
    from explrobust_core.jobs import JobStore

    jobs = {j.id: j for j in JobStore(runs).list()}
    assert set(jobs) == set(ids) and {j.status for j in jobs.values()} == {"interrupted"}
    assert {j.name for j in jobs.values()} == {"j1", "j2"}


def test_counts_outside_the_typed_configs_are_capped(isolated, capsys):
    ckpt = isolated / "shipped" / "digits" / "natural.safetensors"
    cases = [
        (("sample", "--way", "1", "--dataset", "digits", "--n-pairs", 10**9), "n_pairs"),
        (("compare-ways", "--checkpoint", ckpt, "--n-pairs", 10**9), "n_pairs"),
        (("curvature", "--checkpoint", ckpt, "--indices", "0", "--n-samples", 10**9), "n_samples"),
        (("curvature", "--checkpoint", ckpt, "--indices", "0", "--n-samples", -1, "--iterations", -1), "iterations"),
        (("landscape", "--checkpoint", ckpt, "--indices", "0", "--n-pairs", 0), "--n-pairs"),
    ]
    for argv, field in cases:
        assert_refused(*run_cli(capsys, *argv), field)
    assert tree(isolated / "runs") == set()


def test_bad_paths_and_targets_are_one_line_errors_and_write_nothing(isolated, capsys):
    ckpt = isolated / "shipped" / "digits" / "natural.safetensors"
    a_file = isolated / "a_file"
    a_file.write_text("x")
    a_dir = isolated / "a_dir"
    a_dir.mkdir()
    before = tree(isolated)
    cases = [
        (("explain", "--checkpoint", ckpt, "--indices", "0", "--target", "99", "--out", isolated / "o"), "class 99"),
        (("explain", "--checkpoint", ckpt, "--indices", "0", "--target", "-1", "--out", isolated / "o"), "class -1"),
        (("explain", "--checkpoint", ckpt, "--indices", "0", "--out", a_file), "--out"),
        (("explain", "--checkpoint", ckpt, "--indices", "0", "--out", a_file / "below"), "is a file"),
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "2", "--json", a_dir), "--json"),
        (("sample", "--way", "1", "--dataset", "digits", "--out", a_dir), "--out"),
        (("train", "--name", "t", "--dataset", "digits", "--out", a_file), "--out"),
    ]
    for argv, needle in cases:
        assert_refused(*run_cli(capsys, *argv), needle)
    assert tree(isolated) == before


def test_nonsense_values_are_refused_and_every_override_is_validated(isolated, capsys):
    from explrobust_core.attacks.classification import minimal_flip_eps
    from explrobust_core.sampling import PairSet, save_pairs

    ckpt = isolated / "shipped" / "digits" / "natural.safetensors"
    mnist_pairs = save_pairs(PairSet(way=1, dataset="mnist5k", n_candidates=10, pairs=[(0, 1)]), isolated / "p.json")
    cases = [
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "0"), "--n-images"),
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "-5"), "--n-images"),
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "2", "--minimal-eps", "nan"), "--minimal-eps"),
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "2", "--minimal-eps", "-1"), "--minimal-eps"),
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "2", "--eps", "nan"), "eps: Input should be a finite"),
        (("attack-classifier", "--checkpoint", ckpt, "--n-images", "2", "--eps-list", "0.1,500"), "eps"),
        (("landscape", "--checkpoint", ckpt, "--pairs", mnist_pairs), "mnist5k/test"),
    ]
    for argv, needle in cases:
        assert_refused(*run_cli(capsys, *argv), needle)
    model, _ = load_checkpoint(ckpt, "cpu")
    x = torch.rand(2, 1, 8, 8)
    for bad in (float("nan"), -1.0, 1e9):
        with pytest.raises(ConfigError, match="eps"):
            minimal_flip_eps(model, x, torch.tensor([0, 1]), eps_max=bad, config={"steps": 1})


def test_sample_writes_to_the_runs_folder_and_never_into_the_shipped_zoo(isolated, capsys):
    shipped = isolated / "shipped"
    before = {p: p.read_bytes() for p in shipped.rglob("*") if p.is_file()}
    code, err = run_cli(capsys, "sample", "--way", "1", "--dataset", "digits", "--n-pairs", "10")
    assert code == 0, err
    written = list((isolated / "runs" / "pairs").rglob("*.json"))
    assert len(written) == 1 and len(json.loads(written[0].read_text())["pairs"]) == 10
    code, err = run_cli(capsys, "sample", "--way", "1", "--dataset", "digits", "--n-pairs", "10",
                        "--out", shipped / "digits" / "pairs_way1.json")
    assert_refused(code, err, "shipped zoo")
    assert {p: p.read_bytes() for p in shipped.rglob("*") if p.is_file()} == before


def test_refusals_are_one_line_that_names_the_field(isolated, capsys):
    ckpt = isolated / "shipped" / "digits" / "natural.safetensors"
    cases = [
        (("landscape", "--checkpoint", ckpt, "--indices", "0", "--points", "100001"), "points"),
        (("landscape", "--checkpoint", ckpt, "--indices", "0", "--batch-size", "0"), "batch_size"),
        (("sample", "--way", "1", "--dataset", "digits", "--n-pairs", "0"), "n_pairs"),
        (("jobs", "submit", "--name", "../x"), "name"),
        (("explain", "--checkpoint", ckpt, "--indices", "0,0,0", "--out", isolated / "o"), "indices repeat"),
        (("attack-explanation", "--checkpoint", ckpt, "--indices", "1,1", "--out", isolated / "o"), "indices repeat"),
    ]
    for argv, needle in cases:
        assert_refused(*run_cli(capsys, *argv), needle)
    assert tree(isolated / "runs") <= {"jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"}


def test_job_specs_are_strict_and_their_device_is_checked_at_submit():
    from explrobust_core.jobs import parse_spec

    for value in ("3", True, 2.5):
        with pytest.raises(ConfigError, match="epochs"):
            parse_spec({"kind": "train", "train": {"name": "a", "epochs": value}})
    for device in ["tpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"]):
        with pytest.raises(ConfigError, match="device"):
            parse_spec({"kind": "evaluate", "model": "mnist5k/natural", "device": device})
        with pytest.raises(ConfigError, match="device"):
            parse_spec({"kind": "train", "train": {"name": "a", "device": device}})
    assert parse_spec({"kind": "evaluate", "model": "mnist5k/natural", "device": "cpu"}).device == "cpu"


def test_the_training_page_shows_a_lost_job_store_as_an_error_box(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    runs = tmp_path / "runs"
    _fill_store(runs)
    (runs / "jobs.sqlite").write_bytes(b"")
    monkeypatch.setenv("EXPLROBUST_RUNS", str(runs))
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(tmp_path / "zoo"))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120).run()
    at.switch_page("pages/training.py").run()
    assert not at.exception
    assert "rebuild-store" in at.error[0].value and "2 job folders" in at.error[0].value
