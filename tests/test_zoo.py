import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from explrobust_core.models import build_model
from explrobust_core.zoo import (CheckpointError, ModelCard, import_state_dict, list_checkpoints, load_checkpoint,
                                 read_foreign_state_dict, save_checkpoint)

CLASSES = [str(i) for i in range(10)]


def card_for(name="m1", arch="resnet18", **kw):
    return ModelCard(name=name, architecture=arch, arch_config=kw.pop("arch_config", {"base_width": 8}),
                     dataset="digits", input_shape=(1, 8, 8), mean=[0.3], std=[0.4], classes=CLASSES, **kw)


def model_for(card):
    from explrobust_core.zoo import build_from_card

    model = build_from_card(card)
    with torch.no_grad():  # give BatchNorm non-default running stats so they are checked too
        model.train()
        model(torch.rand(16, 1, 8, 8))
    return model.eval()


def test_round_trip_is_bit_exact(tmp_path):
    card = card_for(seed=3, epochs=2, metrics={"clean_accuracy": 0.9, "pgd": {"eps": 0.1, "accuracy": 0.5}})
    model = model_for(card)
    path = save_checkpoint(model, card, tmp_path)
    loaded, loaded_card = load_checkpoint(path, "cpu")
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for k in original:
        assert original[k].dtype == restored[k].dtype and torch.equal(original[k], restored[k]), k
    assert loaded_card.metrics == card.metrics and loaded_card.weights_sha256
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_writes_leave_no_temp_files_and_do_not_overwrite(tmp_path):
    card = card_for()
    save_checkpoint(model_for(card), card, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1.json", "m1.safetensors"]
    with pytest.raises(CheckpointError, match="exists already"):
        save_checkpoint(model_for(card), card, tmp_path)


def test_card_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown architecture"):
        card_for(arch="resnet1000")
    with pytest.raises(ValueError, match="mean and std need 1"):
        ModelCard(name="x", architecture="convnet", dataset="d", input_shape=(1, 8, 8), mean=[0.1, 0.2],
                  std=[0.3, 0.3], classes=CLASSES)
    with pytest.raises(ValueError, match="invalid checkpoint name"):
        card_for(name="../../etc/passwd")
    with pytest.raises(ValueError, match="out of range"):
        ModelCard(name="x", architecture="convnet", dataset="d", input_shape=(1, 10**6, 8), mean=[0.1],
                  std=[0.3], classes=CLASSES)
    with pytest.raises(ValueError, match="base_width"):
        card_for(arch_config={"base_width": "wide"})


def test_card_that_does_not_match_the_weights(tmp_path):
    card = card_for()
    path = save_checkpoint(model_for(card), card, tmp_path)
    data = json.loads(path.with_suffix(".json").read_text())
    data.update(architecture="convnet", arch_config={})
    path.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="do not match the card's architecture"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep_checksum", [True, False])
def test_truncated_weights_are_refused(tmp_path, keep_checksum):
    card = card_for()
    path = save_checkpoint(model_for(card), card, tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    if not keep_checksum:  # then the safetensors parser itself must catch it
        data = json.loads(path.with_suffix(".json").read_text())
        data["weights_sha256"] = None
        path.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="checksum|not a valid safetensors"):
        load_checkpoint(path)


def test_bad_card_json_is_a_clear_error(tmp_path):
    card = card_for()
    path = save_checkpoint(model_for(card), card, tmp_path)
    path.with_suffix(".json").write_text('{"name": "m1", "architecture": 5')
    with pytest.raises(CheckpointError, match="model card"):
        load_checkpoint(path)
    listing = list_checkpoints(tmp_path)
    assert len(listing) == 1 and listing[0].card is None and "model card" in listing[0].error


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_with_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_foreign_state_dict(evil)
    with pytest.raises(CheckpointError, match="refused"):
        import_state_dict(evil, card_for(), tmp_path / "zoo")
    assert not marker.exists()
    # the same bytes, unpickled naively, would have run the payload: the test can fail
    with open(evil, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_renamed_zip_and_garbage_are_refused(tmp_path):
    fake = tmp_path / "weights.pt"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    with pytest.raises(CheckpointError):
        read_foreign_state_dict(fake)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError):
        read_foreign_state_dict(garbage)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_foreign_state_dict(not_a_dict)


def test_import_foreign_state_dict(tmp_path):
    card = card_for(name="imported")
    source = model_for(card)
    # a DataParallel-style dict without our normalize buffers, wrapped in {"state_dict": ...}
    foreign = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("normalize.")}
    torch.save({"state_dict": foreign, "epoch": 3}, tmp_path / "foreign.pth")
    path = import_state_dict(tmp_path / "foreign.pth", card, tmp_path / "zoo")
    loaded, _ = load_checkpoint(path, "cpu")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), source(x))


def test_import_of_a_wrong_architecture_is_explained(tmp_path):
    other = build_model("convnet", input_shape=(1, 8, 8), num_classes=10, mean=[0.3], std=[0.4])
    torch.save(other.state_dict(), tmp_path / "convnet.pt")
    with pytest.raises(CheckpointError, match="missing .* tensors"):
        import_state_dict(tmp_path / "convnet.pt", card_for(), tmp_path / "zoo")


def test_listing_finds_valid_checkpoints(tmp_path):
    for name in ("a", "b"):
        card = card_for(name=name)
        save_checkpoint(model_for(card), card, tmp_path / "digits")
    names = [e.card.name for e in list_checkpoints(tmp_path, tmp_path / "missing")]
    assert names == ["a", "b"]


def test_pickle_module_is_not_used_on_safetensors(tmp_path, monkeypatch):
    card = card_for()
    path = save_checkpoint(model_for(card), card, tmp_path)

    def boom(*a, **k):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    load_checkpoint(path, "cpu")


# --------------------------------------------------------------------------- one way into the user zoo
#
# An upload, a finished training job and `explrobust train` each add their model with zoo.add_to_user_zoo: the
# tests below add a model by each path, watch that function being called, and see each path refuse a taken name
# and a shipped model's name with the same message, leaving the zoo as it was.


def small_card(name: str) -> ModelCard:
    return ModelCard(name=name, architecture="convnet", arch_config={"width1": 4, "width2": 4, "hidden": 8},
                     dataset="digits", input_shape=(1, 8, 8), mean=[0.0], std=[1.0], classes=CLASSES)


@pytest.fixture
def zoos(tmp_path, monkeypatch):
    """A private user zoo and a private shipped zoo holding digits/shipped_one; every module's reference to
    add_to_user_zoo is wrapped to record the names it adds."""
    from explrobust_core import uploads, zoo
    from explrobust_core.zoo import build_from_card

    user, shipped = tmp_path / "user_zoo", tmp_path / "shipped_zoo"
    monkeypatch.setenv("EXPLROBUST_USER_ZOO", str(user))
    monkeypatch.setenv("EXPLROBUST_ZOO", str(shipped))
    save_checkpoint(build_from_card(small_card("shipped_one")), small_card("shipped_one"), shipped / "digits")
    added, real = [], zoo.add_to_user_zoo

    def spy(model, card, **kw):
        added.append(card.name)
        return real(model, card, **kw)

    monkeypatch.setattr(zoo, "add_to_user_zoo", spy)
    monkeypatch.setattr(uploads, "add_to_user_zoo", spy)  # uploads imports the name itself
    return user, added


def add_by_upload(name: str, tmp_path: Path) -> Path:
    from safetensors.torch import save

    from explrobust_core.uploads import install_checkpoint
    from explrobust_core.zoo import build_from_card

    card = small_card(name)
    return install_checkpoint(save(build_from_card(card).state_dict()), "w.safetensors", card).path


def add_by_job(name: str, tmp_path: Path) -> Path:
    """What a finished training job does with its checkpoint (jobs._run_training → register_checkpoint)."""
    from explrobust_core.jobs import register_checkpoint
    from explrobust_core.zoo import build_from_card

    card = small_card(name)
    checkpoint = save_checkpoint(build_from_card(card), card, tmp_path / "job")
    return register_checkpoint(checkpoint, "digits", name)


def add_by_train_cli(name: str, tmp_path: Path) -> Path:
    import contextlib
    import io

    from explrobust_core.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--name", name, "--dataset", "digits", "--epochs", "1", "--max-train-images", "64",
                     "--batch-size", "64", "--eval-images", "10", "--eval-pgd-steps", "0", "--device", "cpu", "--quiet"])
    lines = err.getvalue().strip().splitlines()
    if code:  # a refusal: one line, no traceback, raised here as the other paths raise it
        assert code == 2 and len(lines) == 1 and lines[0].startswith("explrobust: error: "), lines
        raise CheckpointError(lines[0].removeprefix("explrobust: error: "))
    from explrobust_core.zoo import user_zoo_dir

    return user_zoo_dir() / "digits" / f"{name}.safetensors"


PATHS = {"upload": add_by_upload, "job": add_by_job, "train": add_by_train_cli}


def test_train_out_into_the_user_zoo_is_refused_before_training(zoos, capsys):
    from explrobust_core.cli import main

    user, added = zoos
    assert main(["train", "--name", "sneaky", "--dataset", "digits", "--epochs", "1", "--out", str(user / "digits"),
                 "--device", "cpu", "--quiet"]) == 2
    assert "lies in the user zoo" in capsys.readouterr().err
    assert added == [] and not (user / "digits" / "sneaky.safetensors").exists()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_way_in_goes_through_add_to_user_zoo(zoos, tmp_path, path):
    user, added = zoos
    weights = PATHS[path]("fresh", tmp_path)
    assert added == ["fresh"]
    assert weights == user / "digits" / "fresh.safetensors"
    model, card = load_checkpoint(weights, "cpu")  # loads: checked, finite, with its card beside it
    assert card.name == "fresh" and card.weights_sha256


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("name, message", [("taken", "you already have a model digits/taken"),
                                           ("shipped_one", "digits/shipped_one is a shipped model")])
def test_each_way_in_refuses_a_taken_name_the_same_way(zoos, tmp_path, path, name, message):
    from explrobust_core.zoo import add_to_user_zoo, build_from_card

    user, added = zoos
    first = add_to_user_zoo(build_from_card(small_card("taken")), small_card("taken"))
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=message):  # UploadError and CheckpointError both are ValueErrors
        PATHS[path](name, tmp_path)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    assert first.exists()


def test_a_model_with_infinite_logits_never_enters_the_user_zoo(zoos, tmp_path):
    """Finite weights whose logits overflow: refused by add_to_user_zoo itself and by an upload, same message."""
    from safetensors.torch import save

    from explrobust_core.uploads import UploadError, install_checkpoint
    from explrobust_core.zoo import add_to_user_zoo, build_from_card

    user, _ = zoos
    card = small_card("overflow")
    model = build_from_card(card)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e30)  # finite, but every product overflows float32
    with pytest.raises(CheckpointError, match="NaN or infinite logits"):
        add_to_user_zoo(model, card)
    with pytest.raises(UploadError, match="NaN or infinite logits"):
        install_checkpoint(save(model.state_dict()), "w.safetensors", card)
    assert not list(user.rglob("*.safetensors"))


def test_a_resumed_job_keeps_its_own_registration_and_another_model_is_refused(zoos, tmp_path):
    """A job whose end was never recorded is resumed after it had joined the zoo: the same weights are its own
    registration; another model under that name is still refused."""
    from explrobust_core.jobs import register_checkpoint
    from explrobust_core.zoo import build_from_card

    card = small_card("m")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_from_card(card), card, tmp_path / "run")
    first = register_checkpoint(checkpoint, "digits", "m")
    weights = first.read_bytes()
    assert register_checkpoint(checkpoint, "digits", "m") == first
    torch.manual_seed(1)
    save_checkpoint(build_from_card(card), card, tmp_path / "run", overwrite=True)
    with pytest.raises(CheckpointError, match="already have a model digits/m.*stays at"):
        register_checkpoint(checkpoint, "digits", "m")
    assert first.read_bytes() == weights
