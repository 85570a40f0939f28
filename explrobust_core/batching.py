"""Batches that adapt to the memory at hand.

On a GPU a batch size that fits one model runs out of memory on a larger one (an imported WideResNet at
224×224). :func:`map_batches` runs ``fn`` over ``[start, stop)`` ranges of ``n`` items; when a range runs out of
memory (``torch.OutOfMemoryError``, which CUDA raises) it frees the cache, halves the batch and retries the
same range, down to one item, and keeps the smaller size for the rest. On the CPU an out-of-memory error is
the operating system's, not torch's, so :func:`cpu_batch_cap` gives a starting size from the model's size
instead; :func:`start_batch_size` picks the first size for either device.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def cpu_batch_cap(model: nn.Module, input_numel: int, budget_bytes: int = 2 << 30) -> int:
    """A batch size whose activations stay within ``budget_bytes`` on the CPU, estimated as 4 bytes × (input
    size + 8 × the parameters' count per image, a coarse upper bound for convolutional networks' feature maps),
    at least 1."""
    params = sum(p.numel() for p in model.parameters())
    per_image = 4 * (input_numel + 8 * min(params, 50 * input_numel))
    return max(1, budget_bytes // max(per_image, 1))


def map_batches(fn: Callable[[int, int], T], n: int, batch_size: int,
                on_shrink: Callable[[int], None] | None = None) -> list[T]:
    """``[fn(0, b), fn(b, 2b), …]`` over ``n`` items; a range that raises ``torch.OutOfMemoryError`` is retried
    with half the batch (``on_shrink(new_size)`` is told), down to 1 item, after which the error propagates."""
    out: list[T] = []
    start, size = 0, max(1, int(batch_size))
    while start < n:
        stop = min(n, start + size)
        try:
            out.append(fn(start, stop))
        except torch.OutOfMemoryError:
            if stop - start == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, (stop - start) // 2)
            if on_shrink is not None:
                on_shrink(size)
            continue
        start = stop
    return out


# the first batch on an accelerator, in model inputs: halved there on out-of-memory, so it may be generous
ACCELERATOR_START_INPUTS = 512


def start_batch_size(model: nn.Module, input_numel: int, inputs_per_item: int = 1, items: int | None = None) -> int:
    """How many items to put in the first batch: on the CPU the model's cap (:func:`cpu_batch_cap`), on an
    accelerator :data:`ACCELERATOR_START_INPUTS` (halved by :func:`map_batches` if it does not fit), divided by
    the model inputs one item costs (an integrated-gradients map: its steps), at least 1, at most ``items``."""
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    budget = cpu_batch_cap(model, input_numel) if on_cpu else ACCELERATOR_START_INPUTS
    size = max(1, budget // max(1, int(inputs_per_item)))
    return size if items is None else max(1, min(size, int(items)))
