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
