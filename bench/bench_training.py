"""Benchmark: one SEP training step, ours against the seed's captum-based way of writing it.

Run from the repository root::

    .venv/bin/python bench/bench_training.py                 # full run (5 repeats, 128 images, 10 PGD steps), JSON on stdout
    .venv/bin/python bench/bench_training.py --quick         # smoke test (2 repeats, 16 images, 2 PGD steps)
    .venv/bin/python bench/bench_training.py --out bench_training.json --threads 1

On a machine shared with other torch jobs, pass ``--threads 1``: with more threads than free cores
torch's OpenMP workers contend and a step takes tens of times longer on both sides, which swamps
what is being measured.

What is compared. *Ours* is ``OBJECTIVES.get("sep")`` (``explrobust_core.training.objectives.sep``):
PGD adversarial training CE on x_adv plus λ · mean over images of ``explanation_loss(m(x+ζ), m(x))``,
with maps m = ``attribution_to_map`` of our differentiable gradient × input. The *peer* computes the
same objective the way the seed code did: the maps come from a ``captum.attr.InputXGradient`` whose
instance attribute ``gradient_func`` is replaced by a copy of captum's ``compute_gradients`` that
passes ``create_graph=True`` to ``torch.autograd.grad`` (captum's files are not touched), and the training
attack is Madry PGD written in plain torch ops (``plain_pgd``: ``pgd_perturb``'s steps, without explrobust's
kernels, which ``pgd_perturb`` now runs under). Everything else is shared: ``eval_mode``, the same generator
seed, the same ζ draw, CE, ``attribution_to_map`` and ``explanation_loss``. The ``stability_term`` row isolates
the attribution path.

Rows (ConvNet on a batch of real ``mnist5k`` training images, Adam, fixed seeds):

* ``sep_step`` — one full training step: zero_grad, forward (PGD + CE + stability term), backward,
  Adam step. Before every timed run both models and optimizers are reset to the same initial state
  (untimed), so every run times the same first step.
* ``stability_term`` — only λ · stability forward + backward (no PGD, no CE, no optimizer step):
  the part where the attribution path matters.

Each row first runs both sides once, untimed (warm-up), and compares them: ``agreement`` holds the
relative difference of the losses, ``|ours − peer| / |peer|``, and of the parameter gradients,
``max|g_ours − g_peer| / max|g_peer|`` per tensor (worst tensor reported) and over all parameters
at once; float32 round-off is ~1e-6, and anything near 1e-3 or above means the sides computed
different things. Then ``--repeats`` timed runs per side, interleaved with alternating order (ours,
peer, peer, ours, ours, peer, …) so machine noise and order effects hit both alike. Per side:
median, min, max and IQR of the wall times in seconds.

Reading the ratios: ``speedup = peer_median / ours_median``; above 1 we are faster (1.3 → the peer
takes 1.3× our time; the project aims at ≥ 1.3 for the training step), below 1 we are slower.
``speedup_min`` compares the fastest runs, less sensitive to a busy machine. Look at the IQRs before
reading much into ratios within ~10 % of 1. Timings are reported, never asserted on.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time one SEP training step (ours) against the same objective with captum InputXGradient "
                    "made differentiable through its gradient_func (the seed's way), interleaved on the same "
                    "machine, and print a JSON report. speedup = peer_median / ours_median; >1 means we are faster.")
    C.add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="mnist5k training images in the batch (default 128; 16 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="PGD steps of the training attack (default 10; 2 with --quick)")
    p.add_argument("--eps", type=float, default=0.3, help="PGD L∞ budget (default 0.3)")
    p.add_argument("--lam", type=float, default=5e4, help="SEP λ (default 5e4)")
    p.add_argument("--sigma", type=float, default=0.1, help="σ of the Gaussian noise ζ (default 0.1)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    args = p.parse_args(argv)
    return C.resolve_defaults(args, {"repeats": (2, 5), "batch": (16, 128), "steps": (2, 10)}, p)


# --------------------------------------------------------------------------- the peer: captum, seed style


def compute_gradients_create_graph(forward_fn, inputs, target_ind=None, additional_forward_args=None):
    """Stands in for captum's gradient function (same contract), built with ``create_graph=True``.

    Set as an ``InputXGradient`` instance's ``gradient_func`` so that its attributions carry the graph
    back to the weights (double backprop), as the seed's patch did. Written here; not captum's code.
    """
    extra = additional_forward_args if isinstance(additional_forward_args, tuple) else (
        () if additional_forward_args is None else (additional_forward_args,))
    with torch.enable_grad():
        out = forward_fn(*inputs, *extra)
        if target_ind is not None:  # each example's own target output
            out = out.gather(1, torch.as_tensor(target_ind, device=out.device).reshape(-1, 1))
        return torch.autograd.grad(out.sum(), inputs, create_graph=True)


def differentiable_input_x_gradient(model: torch.nn.Module):
    from captum.attr import InputXGradient

    ixg = InputXGradient(model)
    ixg.gradient_func = compute_gradients_create_graph  # instance attribute: captum itself is not patched
    return ixg


def plain_pgd(model, x, y, eps: float, steps: int, step_size: float | None, gen: torch.Generator) -> torch.Tensor:
    """The training attack as the seed's script would run it: Madry L∞ PGD in plain torch ops (no explrobust
    kernels), written out step for step as ``pgd_perturb`` computes it (uniform random start from ``gen``, sign
    steps, projection, the last iterate that misclassified, else the final one), so both sides see the same
    adversarial batch and the agreement check can hold to the bit."""
    step = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    u = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    x_adv = (x + (2 * u - 1) * eps).clamp(0, 1)
    best, fooled = x_adv.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(steps + 1):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            now = logits.detach().argmax(1) != y
            best = torch.where(now.view(-1, 1, 1, 1), x_adv.detach(), best)
            fooled |= now
            if i == steps:
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="none").sum(), x_adv)
        with torch.no_grad():
            x_adv = (x + (x_adv + step * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return torch.where(fooled.view(-1, 1, 1, 1), best, x_adv.detach())


# --------------------------------------------------------------------------- timing and comparison


def param_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameter gradients; a parameter the loss does not reach (e.g. the last bias for the
    stability term alone) counts as a zero gradient."""
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def compare(ours: dict, peer: dict) -> dict:
    """Agreement of two ``{"loss": float, "terms": {...}, "grads": {name: tensor}}`` results."""
    per_tensor = {}
    for name, g_peer in peer["grads"].items():
        g_ours = ours["grads"][name].double()
        g_peer = g_peer.double()
        scale = g_peer.abs().max().item()
        diff = (g_ours - g_peer).abs().max().item()
        per_tensor[name] = diff / scale if scale > 0 else diff
    flat_o = torch.cat([g.double().flatten() for g in ours["grads"].values()])
    flat_p = torch.cat([g.double().flatten() for g in peer["grads"].values()])
    scale = flat_p.abs().max().item()
    worst = max(per_tensor, key=per_tensor.get)
    return {
        "loss_ours": ours["loss"],
        "loss_peer": peer["loss"],
        "loss_rel_diff": _rel(ours["loss"], peer["loss"]),
        "terms_rel_diff": {k: _rel(ours["terms"][k], peer["terms"][k]) for k in peer["terms"]},
        "grads_max_rel_diff": (flat_o - flat_p).abs().max().item() / scale if scale > 0 else 0.0,
        "grads_worst_tensor": worst,
        "grads_worst_tensor_rel_diff": per_tensor[worst],
        "grads_all_nonzero_norm": bool(flat_p.norm().item() > 0 and flat_o.norm().item() > 0),
    }


def bench_row(name: str, sides: dict[str, tuple[Callable[[], None], Callable[[], object], Callable[[], dict]]],
              repeats: int, info: dict) -> dict:
    """``sides[label] = (setup, timed_fn, check_fn)``; labels ``ours`` and ``peer``. The warm-up runs
    ``check_fn`` (it also returns the loss and gradients for the agreement check)."""
    t = C.run_interleaved(name, {label: fn for label, (_s, fn, _c) in sides.items()}, repeats,
                          warmups={label: check for label, (_s, _f, check) in sides.items()},
                          setups={label: setup for label, (setup, _f, _c) in sides.items()}, keep_first=False)
    agreement = compare(t.warm["ours"], t.warm["peer"])
    s_ours, s_peer = t.stats("ours"), t.stats("peer")
    return {"name": name, **info, "ours": s_ours, "peer": s_peer, **C.speedup(s_ours, s_peer), "agreement": agreement}


# --------------------------------------------------------------------------- rows


def run(args: argparse.Namespace) -> dict:
    # captum warns that x did not require grad on every call (the seed's path); keep stderr readable
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")

    from explrobust_core.data import load_dataset
    from explrobust_core.explain import attribute
    from explrobust_core.metrics import attribution_to_map, explanation_loss
    from explrobust_core.models import build_model, count_parameters, eval_mode
    from explrobust_core.training.objectives import OBJECTIVES

    ds = load_dataset("mnist5k", "train")
    if args.batch > len(ds):
        raise SystemExit(f"--batch {args.batch} exceeds the {len(ds)} mnist5k training images")
    x, y = ds.batch(range(args.batch))
    x, y = x.float().contiguous(), y.long().contiguous()

    entry = OBJECTIVES.get("sep")
    # pixel space (x ⊙ ∇ₓf), as captum's InputXGradient on the peer side: SEP's default is now the model's
    # input space, which made the two sides compute different maps (loss rel. diff 5e-2)
    cfg = entry.make_config({"lam": args.lam, "eps": args.eps, "steps": args.steps,
                             "explainer": "gradient_x_input", "sigma": args.sigma, "space": "pixel"})
    arch, mean, std = "convnet", [0.1307], [0.3081]

    torch.manual_seed(args.seed)
    init_model = build_model(arch, input_shape=(1, 28, 28), num_classes=10, mean=mean, std=std).train()
    init_state = copy.deepcopy(init_model.state_dict())
    model_ours, model_peer = copy.deepcopy(init_model), copy.deepcopy(init_model)
    ixg_peer = differentiable_input_x_gradient(model_peer)  # built once, as a training script would
    optimizers: dict[str, torch.optim.Optimizer] = {}

    def make_setup(label: str, model: torch.nn.Module) -> Callable[[], None]:
        def setup() -> None:
            model.load_state_dict(init_state)
            model.train()
            optimizers[label] = torch.optim.Adam(model.parameters(), lr=args.lr)
        return setup

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    # --- the two objectives ------------------------------------------------------------------

    def ours_objective(model, g):
        return entry.obj(model, x, y, cfg, g)

    def peer_objective(model, g):
        with eval_mode(model):
            x_adv = plain_pgd(model, x, y, cfg.eps, cfg.steps, cfg.step_size, g)
        ce = F.cross_entropy(model(x_adv), y)
        loss, stability = peer_stability(model, g, ce)
        return loss, {"ce_adv": ce.item(), "explanation_stability": stability.item()}

    def peer_stability(model, g, ce=None):
        zeta = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device) * cfg.sigma

        def maps(inp):
            return attribution_to_map(ixg_peer.attribute(inp, target=y))

        stability = explanation_loss(maps((x + zeta).clamp(0, 1)), maps(x)).mean()
        return (cfg.lam * stability if ce is None else ce + cfg.lam * stability), stability

    def ours_stability(model, g):  # the stability term exactly as objectives.sep writes it (on="clean", ReLU model)
        zeta = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device) * cfg.sigma

        def maps(inp):
            return attribution_to_map(attribute(model, inp, cfg.explainer, target=y, create_graph=True))

        stability = explanation_loss(maps((x + zeta).clamp(0, 1)), maps(x)).mean()
        return cfg.lam * stability, stability

    # --- row 1: full step --------------------------------------------------------------------

    def step_fns(label, model, objective):
        def step():
            opt = optimizers[label]
            opt.zero_grad(set_to_none=True)
            loss, _terms = objective(model, gen())
            loss.backward()
            opt.step()

        def check():
            opt = optimizers[label]
            opt.zero_grad(set_to_none=True)
            loss, terms = objective(model, gen())
            loss.backward()
            grads = param_grads(model)
            opt.step()
            return {"loss": loss.item(), "terms": dict(terms), "grads": grads}

        return make_setup(label, model), step, check

    # --- row 2: stability term only ----------------------------------------------------------

    def stability_fns(label, model, term):
        def run():
            model.zero_grad(set_to_none=True)
            loss, _stab = term(model, gen())
            loss.backward()

        def check():
            model.zero_grad(set_to_none=True)
            loss, stab = term(model, gen())
            loss.backward()
            grads = param_grads(model)
            return {"loss": loss.item(), "terms": {"explanation_stability": stab.item()}, "grads": grads}

        return make_setup(label, model), run, check

    model_info = {"arch": arch, "input_shape": [1, 28, 28], "num_classes": 10, "mean": mean, "std": std,
                  "parameters": count_parameters(init_model), "mode": "train (PGD inside eval_mode)"}
    peer_desc = ("captum.attr.InputXGradient with instance gradient_func = compute_gradients + create_graph=True, "
                 "target=y; the training PGD in plain torch (plain_pgd: pgd_perturb's steps without explrobust's "
                 "kernels, the same generator); the same eval_mode, attribution_to_map, explanation_loss")
    plan = [
        ("sep_step", "zero_grad + SEP forward (PGD, CE(x_adv), λ·stability) + backward + Adam step",
         {"ours": step_fns("ours", model_ours, ours_objective), "peer": step_fns("peer", model_peer, peer_objective)}),
        ("stability_term", "λ·stability forward + backward only (no PGD, no CE, no optimizer step)",
         {"ours": stability_fns("ours", model_ours, ours_stability),
          "peer": stability_fns("peer", model_peer, peer_stability)}),
    ]

    report = C.new_report(
        "training: one SEP step, explrobust_core OBJECTIVES['sep'] vs captum InputXGradient made differentiable via "
        "gradient_func (seed style)", {
            "quick": args.quick,
            "repeats": args.repeats,
            "warmup_runs": 1,
            "order": "interleaved, alternating: ours, peer | peer, ours | ours, peer | ...",
            "reset": "weights and a fresh Adam restored before every run (untimed): each run times the same step",
            "dataset": "mnist5k",
            "split": "train",
            "batch": args.batch,
            "input_shape": list(x.shape),
            "dtype": str(x.dtype).replace("torch.", ""),
            "objective": {"name": "sep", **cfg.model_dump()},
            "optimizer": {"name": "Adam", "lr": args.lr},
            "seed": args.seed,
            "model": model_info,
            "ours": "OBJECTIVES.get('sep').obj(model, x, y, cfg, Generator().manual_seed(seed)); stability_term row: "
                    "the same code as objectives.sep's term (explain.attribute(..., create_graph=True))",
            "peer": peer_desc,
            "speedup": "peer_median / ours_median (>1: we are faster; aim >= 1.3)",
            "agreement": "from the untimed warm-up: loss |ours-peer|/|peer|; grads max|g_ours-g_peer|/max|g_peer| "
                         "over all parameters and for the worst single tensor",
        })

    for name, what, sides in plan:
        row = bench_row(name, sides, args.repeats, {"what": what})
        report["rows"].append(row)
        ag = row["agreement"]
        label = (f"SEP training step, batch {args.batch}, PGD-{args.steps}, gradient×input" if name == "sep_step" else
                 f"SEP stability term only (λ·L_e forward+backward), batch {args.batch}")
        report["table"].append(C.table_entry(
            name, label, row["ours"], peer=row["peer"], peer_label="captum gradient_func override",
            agreement=("identical loss and gradients" if ag["loss_rel_diff"] == 0 and ag["grads_max_rel_diff"] == 0 else
                       f"loss rel. diff {ag['loss_rel_diff']:.0e}, grads {ag['grads_max_rel_diff']:.0e}")))
    return report


if __name__ == "__main__":
    C.cli(parse_args, run)
