"""The Robustness study's sections (not a page of its own): the SEP paper's claims, claim by claim, the TRADES
sweep, the SEP table and "Measure models". Numbers come from explrobust_core.study / replicate; this module
only draws."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explrobust_core import replicate, study, sweep
from explrobust_core.figures import sep_comparison_figure, sweep_figure, trades_sweep_figure
from pages import ui

_VERDICT_ICON = {"reproduced": "✅", "direction only": "➖", "not reproduced": "❌", "not measured": "⏳"}


def pct(v):
    return None if v is None else 100 * v


@st.cache_data(show_spinner="Checking the paper's claims against the stored evaluations…")
def _claims(dataset: str, runs: str, stamp: tuple) -> dict:  # stamp: the files read, with their mtimes
    return replicate.replicate_sep(dataset, runs=runs)


def show_claims(dataset: str, runs: str, stamp: tuple) -> None:
    st.subheader("Paper claims, one by one")
    try:
        report = _claims(dataset, runs, stamp)
    except Exception as err:  # noqa: BLE001 — a message, never a traceback
        st.info(f"No claim table for {dataset}: {err}")
        return
    table = pd.DataFrame([{"": _VERDICT_ICON[c["verdict"]], "claim": f"({c['key']}) {c['claim']}",
                           "the paper": c["paper"], "ours": c["ours"], "interval": c["interval"],
                           "verdict": c["verdict"]} for c in report["claims"]])
    st.dataframe(table, hide_index=True, width="stretch")
    ui.downloads("study_paper_claims", data=table)
    st.caption(f"From the stored evaluations under the zoo's protocol `{report['protocol']}` (adversarial accuracy "
               f"at ε = {report['eps']:g}), {len(report['models'])} models. Models are compared on the victim–target "
               "pairs every compared model kept its prediction on. The same table: `explrobust replicate sep`. "
               "Paper: " + report["paper"] + ".")
    with st.expander("How each verdict is decided"):
        st.markdown("\n".join(f"- **({c['key']})** {c['rule']}." for c in report["claims"]))


def show_trades(rows: list[dict], eps: float, m_spec) -> None:
    st.subheader("TRADES sweep")
    swept = study.trades_sweep(rows)
    measured = [r for r in swept if r["status"] == "ok"]
    if not [r for r in swept if r["objective"] == "trades"]:
        st.info("No TRADES models for this dataset (train some with the objective trades and several β).")
        return
    if len(measured) < 2:
        st.info("Fewer than two TRADES models have an evaluation under this protocol; compute them below.")
        return
    fig = trades_sweep_figure([{**r, "beta": r["sweep_beta"]} for r in measured], m_spec.label, eps)
    table = pd.DataFrame([{
        "β": r["sweep_beta"], "model": r["model"], "clean acc %": pct(r["clean_accuracy"]),
        f"PGD acc % ε={eps:g}": pct(r["pgd_accuracy"]), m_spec.label: r["value"], "CI low": r["value_ci_low"],
        "CI high": r["value_ci_high"]} for r in measured])
    ui.show_figure(fig, "study_trades", data=table)
    note = "β = 0 is the natural model (TRADES's loss with β = 0 is plain cross-entropy)." \
        if any(r["sweep_beta"] == 0 for r in measured) else ""
    missing = [r["model"] for r in swept if r["status"] != "ok"]
    st.caption(note + (f" Missing under this protocol: {', '.join(missing)}." if missing else ""))


def _sep_caption(ok: list[dict], min_clean: float) -> str:
    usable = [r for r in ok if r["Acc clean %"] is None or r["Acc clean %"] >= 100 * min_clean]
    collapsed = [r["checkpoint"] for r in ok if r not in usable]
    text = "The paper's claim: SEP_neg > MAT > SEP_pos in L_e end at about the same adversarial accuracy."
    if usable:
        best = max(usable, key=lambda r: r["L_e end ×1e-7"])
        worst = min(usable, key=lambda r: r["L_e end ×1e-7"])
        text = (f"Among models with at least {100 * min_clean:.0f}% clean accuracy, the most robust explanation "
                f"(highest L_e end) is {best['checkpoint']} ({best['method']}), the least {worst['checkpoint']} "
                f"({worst['method']}). " + text)
    if collapsed:
        text += f" Left out as collapsed (robust to nothing): {', '.join(collapsed)}."
    return text


def show_sep(rows: list[dict], eps: float, min_clean: float, dataset: str) -> None:
    st.subheader("SEP_pos / MAT / SEP_neg (the paper's main table)")
    sep = study.sep_table(rows)
    if not sep:
        st.info("No Normal, MAT or SEP models for this dataset.")
        return
    sep_df = pd.DataFrame(sep)
    st.dataframe(sep_df, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in sep_df.columns
                                if c not in ("model", "method", "checkpoint", "status", "λ", "maps")})
    ui.downloads("study_sep_table", data=sep_df)
    ok = [r for r in sep if r["L_e end ×1e-7"] is not None]
    if ok:
        st.caption(_sep_caption(ok, min_clean))
        by_name = {r["name"]: r for r in rows}
        fig = sep_comparison_figure([{
            "label": f"{r['method']}" + (f" λ={r['λ']:g}" if r["λ"] is not None else ""),
            "le_start": r["L_e start ×1e-7"], "le_end": r["L_e end ×1e-7"],
            "clean_accuracy": by_name[r["checkpoint"]]["clean_accuracy"],
            "pgd_accuracy": by_name[r["checkpoint"]]["pgd_accuracy"]} for r in ok], eps)
        ui.show_figure(fig, "study_sep", data=sep_df)
    with st.expander("The paper's MNIST rows, for orientation (their protocol, ε and training budget, not ours)"):
        paper = pd.DataFrame(study.PAPER_MNIST_TABLE)
        st.dataframe(paper, hide_index=True, width="stretch")
        ui.downloads("study_paper_mnist", data=paper)
    searched = sweep.shipped_sweep(dataset)
    if searched:
        with st.expander("How the shipped SEP models were chosen: the λ sweep (its own, cheaper protocol)"):
            st.markdown(searched.get("note", ""))
            table = pd.DataFrame(searched["rows"])
            st.dataframe(table, hide_index=True, width="stretch")
            ui.show_figure(sweep_figure([r for r in searched["rows"] if r["objective"] == "sep"], "lam", "space"),
                           "study_sep_sweep", data=table)


def show_measure(data, dataset: str, protocol: str, choices: dict, quick, quick_id: str, runs: str, on_done) -> None:
    """Measure models that have no evaluation under the quick protocol or the chosen one: in this page, or as
    background jobs."""
    st.subheader("Measure models")
    if "study_message" in st.session_state:
        kind, text = st.session_state.pop("study_message")
        (st.success if kind == "ok" else st.error)(text)
    targets = {quick_id: "quick"}
    if protocol != quick_id:
        targets[protocol] = "the protocol chosen above"
    target = st.radio("Protocol", list(targets), format_func=lambda pid: f"{targets[pid]}: "
                      + study.describe_protocol(choices[pid]["config"]))
    have = study.records_for(data, dataset, target)
    candidates = sorted(m for m, i in data.models.items() if i.dataset == dataset)
    missing_here = [m for m in candidates if m not in have]
    st.caption(f"{len(missing_here)} of {len(candidates)} models have no evaluation under this protocol"
               + (f": {', '.join(missing_here)}" if missing_here else "") + f". Results are stored under "
               f"`{study.study_dir(runs)}` (never in the shipped zoo); a stored result of the same protocol is "
               "replaced. "
               "On a 2-core CPU the quick protocol takes under a minute per model, the zoo's several minutes; the run "
               "happens in this page, so stay on it until it finishes.")
    chosen = st.multiselect("Models to measure", candidates, default=missing_here,
                            key=f"study_compute_models_{target}_{len(missing_here)}")  # fresh default when it changes
    in_page, in_background = st.columns([1, 3])
    if in_background.button(f"Queue {len(chosen)} background job(s)", disabled=not chosen,
                            help="Runs in its own process (Training jobs page): you can leave this page or close the "
                                 "browser; the results appear here when they are done."):
        from explrobust_core.jobs import EvaluateJobSpec

        try:
            run_config = quick if target == quick_id else study.runnable_config(choices[target]["config"], dataset)
            jobs = [ui.executor().submit(EvaluateJobSpec(model=name, evaluation=run_config.model_dump(mode="json")))
                    for name in chosen]
            st.success(f"Queued {len(jobs)} evaluation job(s); follow them on the Training jobs page.")
        except Exception as err:  # noqa: BLE001 — a clear message, never a traceback
            st.error(f"Cannot queue this protocol: {err}")
    if in_page.button(f"Measure {len(chosen)} model(s)", disabled=not chosen, type="primary"):
        try:
            run_config = quick if target == quick_id else study.runnable_config(choices[target]["config"], dataset)
            split_data = ui.dataset(dataset, run_config.split)
        except Exception as err:  # noqa: BLE001
            st.error(f"Cannot run this protocol: {err}")
            st.stop()
        bar = st.progress(0.0, text="starting…")
        done, failed = study.measure_models(chosen, data, split_data, run_config, runs=runs,
                                            preset="quick" if target == quick_id else "rerun",
                                            load_model=lambda path: ui.load_model(path)[0],
                                            progress=lambda f, text: bar.progress(f, text=text))
        bar.progress(1.0, text="done")
        st.session_state["study_message"] = ("ok" if not failed else "error",
                                             (f"Measured {len(done)} model(s): " + "; ".join(done) if done else "")
                                             + (" Failed: " + "; ".join(failed) if failed else ""))
        st.session_state["study_protocol_next"] = target
        on_done()
        st.rerun()
