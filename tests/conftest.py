"""Shared fixtures: tiny models on the embedded digits, trained for a few seconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("EXPLROBUST_USER_ZOO", "/nonexistent-explrobust-user-zoo")
torch.set_num_threads(2)


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, seed: int = 0):
    """A few epochs of plain Adam on the whole set: enough for a non-trivial, real model."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(images.shape[0])
        for start in range(0, images.shape[0], 128):
            idx = perm[start:start + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_train():
    from explrobust_core.data import load_dataset

    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
    from explrobust_core.data import load_dataset

    return load_dataset("digits", "test")


@pytest.fixture(scope="session")
def digits_convnet(digits_train):
    from explrobust_core.models import build_model

    info = digits_train.info
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=info.num_classes,
                        mean=info.mean, std=info.std)
    return fit(model, digits_train.images, digits_train.labels)


@pytest.fixture(scope="session")
def mnist_test():
    from explrobust_core.data import load_dataset

    return load_dataset("mnist5k", "test")


@pytest.fixture(scope="session")
def mnist_convnet():
    """A real natural model: the ConvNet trained for 2 epochs on the 4,000 mnist5k training digits."""
    from explrobust_core.data import load_dataset
    from explrobust_core.models import build_model

    train = load_dataset("mnist5k", "train")
    info = train.info
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=info.input_shape, num_classes=10, mean=info.mean, std=info.std)
    return fit(model, train.images, train.labels, epochs=2)
