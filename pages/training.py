"""Training jobs: queue training or evaluation runs as background processes; watch, cancel, resume."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from explrobust_core import figures, study, sweep
from explrobust_core.data import DATASETS, default_budgets
from explrobust_core.evaluate import available_presets, deep_merge, make_evaluation_config
from explrobust_core.executors import describe_executor
from explrobust_core.jobs import ACTIVE, EvaluateJobSpec, TrainJobSpec, tail
from explrobust_core.models import ARCHITECTURES
from explrobust_core.registry import ConfigError, format_validation_error
from explrobust_core.training.objectives import OBJECTIVES
from explrobust_core.training.trainer import TrainConfig
from pages import ui

ui.page_header(
    "Training jobs",
    "Train a model with any objective, or evaluate one, as a background process: the page can be closed, "
    "the job goes on, and a finished model appears on the Model zoo page.",
    "Press “Start training” for a one-epoch ConvNet on 1,000 of the embedded MNIST digits (seconds on a CPU); "
    "pick an objective (PGD-AT, TRADES, SEP, IG-NORM, ART) to see its own options.",
)


ex = ui.executor()
st.caption(f"Jobs run on: {describe_executor(ex)}")
train_tab, eval_tab, sweep_tab = st.tabs(["Train a model", "Evaluate a model", "Sweep"])


def protocol(choice: str, dataset_name: str, overrides: str = "") -> dict:
    """quick: the Robustness study's quick protocol (its results fill the same column there); the
    others are the papers' presets. ``overrides``: optional JSON merged over either."""
    extra = json.loads(overrides) if overrides.strip() else {}
    if choice == "quick":
        quick = study.quick_protocol(dataset_name, ex.store.root).model_dump(mode="json")
        return {"evaluation": make_evaluation_config(**deep_merge(quick, extra)).model_dump(mode="json")}
    return {"preset": choice, "evaluation": extra}


with train_tab:
    top = st.columns(3)
    objective = top[0].selectbox("Objective", OBJECTIVES.names(), help=" · ".join(
        f"{n}: {OBJECTIVES.get(n).summary}" for n in OBJECTIVES.names()))
    dataset = top[1].selectbox("Dataset", DATASETS.names(), index=DATASETS.names().index("mnist5k"))
    architecture = top[2].selectbox("Architecture", ARCHITECTURES.names())
    with st.form("train-form"):
        st.caption(f"**{objective}** — {OBJECTIVES.get(objective).summary}")
        left, right = st.columns(2)
        with left:
            # keyed by objective: each objective's form keeps its own values, and the name follows the objective
            run = ui.config_inputs(TrainConfig, f"train-{objective}", overrides={"name": f"my_{objective}", "epochs": 1,
                                                                    "max_train_images": 1000, "eval_images": 200},
                                   # eval_pgd_eps: the dataset's ε, filled by TrainConfig
                                   skip=("dataset", "architecture", "objective", "objective_config", "dataset_config",
                                         "arch_config", "step_every", "step_gamma", "momentum", "amp", "eval_pgd_eps"))
        with right:
            st.markdown(f"**{objective} options**")
            # keyed by dataset too: ε and σ default to the dataset's budget (0.3 for digits, 8/255 for colour)
            options = ui.config_inputs(OBJECTIVES.get(objective).config, f"obj-{objective}-{dataset}",
                                       overrides=default_budgets(dataset))
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        try:
            spec = TrainJobSpec(train=TrainConfig(**run, dataset=dataset, architecture=architecture,
                                                  objective=objective, objective_config=options))
            job = ex.submit(spec)
            st.session_state["job-shown"] = job.id  # the queue below shows the new job
            st.success(f"Job {job.id} is {job.status}.")
        except ValidationError as err:
            st.error(format_validation_error(err, "training config"))
        except (ConfigError, ValueError) as err:
            st.error(str(err))

with eval_tab:
    names = list(ui.checkpoints())
    with st.form("eval-form"):
        model = st.selectbox("Model", names)
        preset = st.selectbox("Protocol", ["quick"] + available_presets(),
                              help="quick: the Robustness study page's quick protocol (its results fill the same "
                                   "column there); the others are the papers' protocols")
        go = st.form_submit_button("Start evaluation")
    if go and model:
        try:
            spec = EvaluateJobSpec(model=model, **protocol(preset, ui.checkpoints()[model].card.dataset))
            job = ex.submit(spec)
            st.session_state["job-shown"] = job.id  # the queue below shows the new job
            st.success(f"Job {job.id} is {job.status}.")
        except (ConfigError, ValueError) as err:
            st.error(str(err))


with sweep_tab:
    st.caption("A grid over one or two options of an objective (SEP's λ and σ, TRADES' β): each point is a "
               "training job that evaluates its model when trained; the table and figure fill in as points finish.")
    top = st.columns(3)
    s_objective = top[0].selectbox("Objective", OBJECTIVES.names(), index=OBJECTIVES.names().index("sep"), key="sw-obj")
    fields = list(OBJECTIVES.get(s_objective).config.model_fields)
    s_dataset = top[1].selectbox("Dataset", DATASETS.names(), index=DATASETS.names().index("mnist5k"), key="sw-data")
    s_preset = top[2].selectbox("Protocol", ["quick"] + available_presets(), key="sw-protocol")
    with st.form("sweep-form"):
        cols = st.columns(2)
        s_name = cols[0].text_input("Sweep name", "my_sweep", key="sweep-name")
        grid_text = cols[1].text_input("Grid (FIELD=V1,V2,… ; a second field after ';')", "lam=-3000,1000,50000",
                                       help="fields of this objective: " + ", ".join(fields), key="sweep-grid")
        s_overrides = st.text_input("Protocol overrides (JSON, optional)", "", key="sweep-overrides",
                                    help='e.g. {"n_images": 500, "targeted": {"steps": 100}}')
        s_run = ui.config_inputs(TrainConfig, f"sweep-{s_objective}", overrides={"name": "x", "epochs": 1,
                                                                    "max_train_images": 1000, "eval_images": 200},
                                 skip=("name", "dataset", "objective", "objective_config", "dataset_config",
                                       "arch_config", "step_every", "step_gamma", "momentum", "amp", "device",
                                       "eval_pgd_eps"))
        s_parallel = st.number_input("Points trained at once", 1, 64, 1, key="sweep-parallel")
        go_sweep = st.form_submit_button("Start sweep")
    if go_sweep:
        try:
            spec = sweep.make_spec(name=s_name, train={**s_run, "dataset": s_dataset, "objective": s_objective},
                                   grid=sweep.parse_grid([g for g in grid_text.split(";") if g.strip()]),
                                   evaluate=protocol(s_preset, s_dataset, s_overrides), max_parallel=int(s_parallel))
            st.success(f"Sweep {spec.name}: {len(sweep.submit(spec, ex)['points'])} points queued.")
        except (ConfigError, ValueError) as err:
            st.error(str(err))
    for name in sweep.list_sweeps(ex.store.root):
        try:
            state = sweep.load_state(name, ex.store.root)
        except ConfigError as err:
            st.error(str(err))
            continue
        rows = sweep.status_rows(state, ex.store)
        grid = list(state["spec"]["grid"])
        st.markdown(f"**Sweep {name}** — {sum(r['status'] == 'done' for r in rows)}/{len(rows)} points done")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        if any(r["clean_accuracy"] is not None for r in rows):
            ui.show_figure(figures.sweep_figure(rows, grid[0], grid[1] if len(grid) > 1 else None),
                           f"sweep_{name}", data=rows)


def _status_icon(status: str) -> str:
    return {"queued": "…", "running": "▶", "done": "✓", "failed": "✗", "cancelled": "■",
            "interrupted": "!"}[status] + " " + status


def job_details(job) -> None:
    st.progress(job.fraction, text=f"{_status_icon(job.status)} · {job.kind} {job.name} · {job.fraction:.0%}")
    if job.error:
        st.error(job.error)
    if job.status == "done" and job.kind == "train":
        st.success(f"Checkpoint {job.result.get('model')} is in the user zoo (Model zoo page).")
    if job.status == "done" and job.kind == "evaluate":
        summary = job.result.get("summary", {})
        st.metric("clean accuracy", f"{summary.get('clean_accuracy', float('nan')):.1%}")
        st.json(summary, expanded=False)
    cols = st.columns(2)
    if job.losses:
        cols[0].markdown("**Training loss by step**")
        cols[0].line_chart(pd.DataFrame(job.losses, columns=["step", "loss"]).set_index("step"), height=220)
    if job.metrics:
        cols[1].markdown("**Per-epoch metrics**")
        cols[1].dataframe(pd.DataFrame(job.metrics), hide_index=True, width="stretch")
    with st.expander("Log", expanded=job.status == "failed"):
        st.code(tail(Path(job.log_path), 30) or "(empty)", language=None)
    b1, b2, b3, _ = st.columns([1, 1, 1, 4])
    try:
        if job.status in ACTIVE and b1.button("Cancel", key=f"cancel-{job.id}"):
            ex.cancel(job.id)
            st.rerun()
        if job.status in ("interrupted", "cancelled", "failed") and b2.button("Resume", key=f"resume-{job.id}"):
            ex.resume(job.id)
            st.rerun()
        if job.status not in ACTIVE and b3.button("Delete", key=f"delete-{job.id}"):
            ex.delete(job.id)
            st.rerun()
    except (ConfigError, KeyError) as err:  # e.g. the job changed state in another session meanwhile
        st.error(str(err))


def queue_view() -> None:
    try:
        ex.start_queued()  # also notices workers that died
    except (ValueError, ImportError) as err:  # e.g. the Ray cluster is gone: the jobs are still listed
        st.error(str(err))
    jobs = ex.store.list()
    active = any(j.status in ACTIVE for j in jobs)
    was_active = st.session_state.get("jobs_were_active", False)
    st.session_state["jobs_were_active"] = active
    if was_active and not active:
        ui.refresh_checkpoints()  # a job just ended: the zoo may hold a new model
        st.rerun()  # a full run redraws the page and stops the polling
    if not jobs:
        st.info("No jobs yet.")
        return
    table = pd.DataFrame([{"id": j.id, "kind": j.kind, "name": j.name, "status": _status_icon(j.status),
                           "progress": j.fraction, "attempts": j.attempts,
                           "submitted": pd.to_datetime(j.created, unit="s"),  # a resume restarts "started"
                           ("resumed" if j.attempts > 1 else "started"): pd.to_datetime(j.started, unit="s")
                           if j.started else None} for j in reversed(jobs)])
    st.dataframe(table, hide_index=True, width="stretch", key="jobs-table",
                 column_config={"progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0)})
    by_id = {j.id: j for j in reversed(jobs)}  # this poll's snapshot: a job deleted meanwhile is simply gone
    shown = st.selectbox("Job", list(by_id), format_func=lambda i: f"{i} · {by_id[i].name}", key="job-shown")
    job_details(by_id[shown])


st.subheader("Queue")
running_now = any(j.status in ACTIVE for j in ex.store.list())
# poll only while something runs; when the last job ends, one full rerun stops the polling
st.fragment(run_every=1.5 if running_now else None)(queue_view)()
