"""A resumable trainer for every registered objective.

Layout of a run named N under OUT::

    OUT/N.run/config.json     the validated TrainConfig
    OUT/N.run/state.pt        latest resumable state (model, optimizer, epoch, batch, history)
    OUT/N.run/metrics.jsonl   one line per finished epoch
    OUT/N.safetensors + N.json   the final checkpoint and its model card (zoo format)

Every random draw is derived from (seed, epoch, batch): the epoch's data order, the attacks'
random starts and dropout. A run stopped at any batch and resumed therefore ends with exactly the
weights of an uninterrupted run (same seed, same device). The state is written atomically at the
end of every epoch and when a stop is requested (SIGTERM/SIGINT via :class:`StopFlag`), which is
honoured at the next batch boundary. States are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..attacks.classification import pgd_perturb
from ..data import DATASETS, default_budgets, load_dataset, spread_indices
from ..device import resolve_device
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_name
from ..models import ARCHITECTURES, build_model, eval_mode
from ..registry import Config
from ..zoo import ModelCard, save_checkpoint
from .objectives import OBJECTIVES


class TrainConfig(Config):
    name: str = Field(..., description="checkpoint name (file stem)")
    dataset: str = Field("mnist5k", description="registered dataset")
    dataset_config: dict[str, Any] = Field(default_factory=dict, description="options of the dataset (root, …)")
    architecture: str = Field("convnet", description="registered architecture")
    arch_config: dict[str, Any] = Field(default_factory=dict, description="options of the architecture")
    objective: str = Field("natural", description="registered training objective")
    objective_config: dict[str, Any] = Field(default_factory=dict, description="options of the objective")
    epochs: int = Field(10, ge=1, le=10_000, description="passes over the training split")
    batch_size: int = Field(128, ge=1, le=8192, description="images per optimisation step")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimiser")
    lr: float = Field(1e-3, gt=0, le=10, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 weight decay")
    schedule: Literal["constant", "cosine", "step"] = Field("constant", description="learning-rate schedule by epoch")
    step_every: int = Field(10, ge=1, le=10_000, description="'step' schedule: epochs between decays")
    step_gamma: float = Field(0.1, gt=0, le=1, description="'step' schedule: decay factor")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random draw")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    amp: bool = Field(False, description="bfloat16 autocast (CUDA only)")
    max_train_images: int | None = Field(None, ge=1, le=10_000_000,
                                         description="use only n training images, spread evenly over the split")
    eval_images: int = Field(500, ge=1, le=100_000,
                             description="held-out test images for per-epoch metrics, spread evenly over the split")
    eval_pgd_eps: float = Field(0.3, ge=0, le=1, description="ε of the per-epoch PGD accuracy (default: the dataset's ε)")
    eval_pgd_steps: int = Field(10, ge=0, le=1000, description="steps of the per-epoch PGD (0: skip)")

    @model_validator(mode="before")
    @classmethod
    def _dataset_budgets(cls, data: Any) -> Any:
        """ε (and SEP's σ) default to the dataset's usual budget, written into the config so the card
        records them: a CIFAR-10 run must not silently train at MNIST's ε = 0.3."""
        dataset = data.get("dataset", "mnist5k") if isinstance(data, dict) else None
        if not isinstance(dataset, str) or dataset not in DATASETS:
            return data  # the field validators report a bad value
        budgets = default_budgets(data.get("dataset", "mnist5k"))
        data = {**data, "eval_pgd_eps": data.get("eval_pgd_eps", budgets["eps"])}
        objective = data.get("objective", "natural")
        if isinstance(objective, str) and objective in OBJECTIVES and isinstance(data.get("objective_config", {}), dict):
            fields = OBJECTIVES.get(objective).config.model_fields
            filled = {k: v for k, v in budgets.items() if k in fields}
            values = {**filled, **data.get("objective_config", {})}
            try:  # every option written out: a resumed run or a card never depends on today's defaults
                values = OBJECTIVES.get(objective).make_config(values).model_dump(mode="json")
            except ValueError:
                pass  # the after-validator reports it with the field named
            data["objective_config"] = values
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "run name")

    @model_validator(mode="after")
    def _entries(self) -> "TrainConfig":
        DATASETS.get(self.dataset).make_config(self.dataset_config)
        ARCHITECTURES.get(self.architecture).make_config(self.arch_config)
        OBJECTIVES.get(self.objective).make_config(self.objective_config)
        return self

    def resolved_objective(self) -> Config:
        return OBJECTIVES.get(self.objective).make_config(self.objective_config)


class StopFlag:
    """Set by SIGTERM/SIGINT (after :meth:`install`); the trainer stops at the next batch."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> "StopFlag":
        def handler(signum, frame):
            self.requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        return self


@dataclass
class TrainOutcome:
    finished: bool
    checkpoint: Path | None
    run_dir: Path
    history: list[dict[str, Any]]


def _derived_seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + p + 1) % (2**62)
    return value


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (epoch // cfg.step_every)
    return cfg.lr


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _epoch_metrics(model, x_eval, y_eval, cfg: TrainConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    with eval_mode(model), torch.no_grad():
        out["clean_accuracy"] = float((model(x_eval).argmax(1) == y_eval).float().mean())
    if cfg.eval_pgd_steps and cfg.eval_pgd_eps > 0:
        with eval_mode(model):
            x_adv, _ = pgd_perturb(model, x_eval, y_eval, eps=cfg.eval_pgd_eps, steps=cfg.eval_pgd_steps,
                                   generator=torch.Generator().manual_seed(cfg.seed))
            with torch.no_grad():
                out["pgd_accuracy"] = float((model(x_adv).argmax(1) == y_eval).float().mean())
    return out


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    command: str | None = None,
    save: Callable[[torch.nn.Module, ModelCard], Path] | None = None,
) -> TrainOutcome:
    """Train (or resume) run ``cfg.name`` under ``out_dir``; returns whether it finished.

    Args:
        cfg: a :class:`TrainConfig` (name, dataset, architecture, objective and its options, epochs, …).
        out_dir: where the checkpoint and the resumable run folder go.
        progress: called with each step's/epoch's numbers; should_stop: polled to stop early (the state is kept
            for a resume); command: recorded in the model card.
        save: ``save(model, card)`` writes the trained model and returns its path (default: :func:`save_checkpoint`
            into ``out_dir``); ``explrobust train`` passes :func:`~explrobust_core.zoo.add_to_user_zoo`.

    Returns:
        A :class:`TrainOutcome`: ``finished``, ``checkpoint`` (path), ``run_dir``, ``history``.

    Example:
        >>> cfg = TrainConfig(name="my_natural", dataset="digits", epochs=1)
        >>> outcome = train(cfg, "runs/my_zoo/digits")
        >>> outcome.finished
        True
    """
    out_dir = Path(out_dir)
    run_dir = out_dir / f"{cfg.name}.run"
    state_path, config_path = run_dir / "state.pt", run_dir / "config.json"
    saved_cfg = json.loads(config_path.read_text()) if config_path.exists() else None
    if saved_cfg is not None and saved_cfg != cfg.model_dump(mode="json"):
        raise ValueError(f"{run_dir} holds a run with another configuration; choose another name or delete it")
    if saved_cfg is None and (out_dir / f"{cfg.name}.safetensors").exists():
        raise ValueError(f"a checkpoint named {cfg.name!r} exists already in {out_dir}")
    atomic_write_json(config_path, cfg.model_dump(mode="json"))

    device = resolve_device(cfg.device)
    train_set, test_set = load_dataset(cfg.dataset, "train", cfg.dataset_config), load_dataset(cfg.dataset, "test", cfg.dataset_config)
    info = train_set.info
    n_train = min(len(train_set), cfg.max_train_images or len(train_set))
    # spread subsets: the embedded splits are sorted by class, so the first n images would be one digit
    train_indices = torch.tensor(spread_indices(len(train_set), n_train))
    x_eval, y_eval = (t.to(device) for t in test_set.batch(spread_indices(len(test_set), cfg.eval_images)))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.architecture, input_shape=info.input_shape, num_classes=info.num_classes,
                        mean=info.mean, std=info.std, config=cfg.arch_config).to(device)
    optimizer = _optimizer(cfg, model)
    objective = OBJECTIVES.get(cfg.objective)
    obj_cfg = cfg.resolved_objective()

    start_epoch, start_batch, history, sums, count, elapsed = 0, 0, [], {}, 0, 0.0
    if state_path.exists():
        state = torch.load(io.BytesIO(state_path.read_bytes()), map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_batch = state["epoch"], state["batch"]
        history, sums, count, elapsed = state["history"], state["sums"], state["count"], state["elapsed"]

    def snapshot(epoch: int, batch: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "batch": batch,
                "history": history, "sums": sums, "count": count, "elapsed": elapsed + time.perf_counter() - t0}

    stop = should_stop or (lambda: False)
    batches = math.ceil(n_train / cfg.batch_size)
    t0 = time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda" else None
    for epoch in range(start_epoch, cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(_derived_seed(cfg.seed, epoch)))
        model.train()
        for b in range(start_batch if epoch == start_epoch else 0, batches):
            if stop():
                _save_state(state_path, snapshot(epoch, b))
                return TrainOutcome(False, None, run_dir, history)
            chosen = train_indices[order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            x, y = (t.to(device) for t in train_set.batch(chosen.tolist()))
            seed = _derived_seed(cfg.seed, epoch, b)
            torch.manual_seed(seed)  # dropout and any other global draw
            gen = torch.Generator().manual_seed(seed)
            optimizer.zero_grad(set_to_none=True)
            if autocast is not None:
                with autocast:
                    loss, terms = objective.obj(model, x, y, obj_cfg, gen)
            else:
                loss, terms = objective.obj(model, x, y, obj_cfg, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; "
                                         f"lower the learning rate or the regulariser weight")
            loss.backward()
            optimizer.step()
            for k, v in {"loss": loss.item(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if progress:
                progress({"epoch": epoch + 1, "epochs": cfg.epochs, "batch": b + 1, "batches": batches,
                          "loss": loss.item()})
        row = {"epoch": epoch + 1, "lr": learning_rate(cfg, epoch), **{k: v / max(count, 1) for k, v in sums.items()},
               **_epoch_metrics(model, x_eval, y_eval, cfg),
               "seconds": round(elapsed + time.perf_counter() - t0, 2)}
        history.append(row)
        sums, count = {}, 0
        _save_state(state_path, snapshot(epoch + 1, 0))
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if progress:
            progress({"epoch": epoch + 1, "epochs": cfg.epochs, "metrics": row})

    wall = elapsed + time.perf_counter() - t0
    final = history[-1] if history else {}
    card = ModelCard(
        name=cfg.name, architecture=cfg.architecture, arch_config=cfg.arch_config, dataset=cfg.dataset,
        input_shape=info.input_shape, mean=info.mean, std=info.std, classes=info.classes,
        objective=cfg.objective, objective_config=obj_cfg.model_dump(mode="json"), seed=cfg.seed,
        epochs=cfg.epochs, wall_time_s=round(wall, 2), command=command,
        metrics={f"train_{k}": v for k, v in final.items() if k in ("clean_accuracy", "pgd_accuracy")} | {
            "train_eval": {"images": int(y_eval.numel()), "pgd_eps": cfg.eval_pgd_eps, "pgd_steps": cfg.eval_pgd_steps},
            "training_history": history},
        notes=f"training config: {json.dumps(cfg.model_dump(mode='json'), sort_keys=True)}",
    )
    if save is None:  # a resumed run that had written its checkpoint before it was stopped writes it again
        path = save_checkpoint(model.cpu(), card, out_dir, overwrite=True)
    else:
        path = save(model.cpu(), card)
    return TrainOutcome(True, path, run_dir, history)
