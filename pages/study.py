"""Robustness study: are classification robustness and explanation robustness correlated across the zoo?"""

import json

import pandas as pd
import streamlit as st

from explrobust_core import replicate, study
from explrobust_core.figures import robustness_scatter_figure
from pages import study_views, ui

ui.page_header(
    "Robustness study",
    "What: the paper's question answered on every model of the zoo: does a model that resists PGD also keep "
    "its explanation under attack? A scatter with Spearman and Pearson correlation (bootstrap CIs over models), "
    "the SEP paper's claims one by one, the TRADES β sweep and the SEP table.",
    "How: numbers come from evaluations stored on disk (model cards, result files, your own runs), grouped by "
    "the protocol they were measured with; models without one are listed and can be measured at the bottom. "
    "The zoo is a designed set of models, not a random sample: read the intervals as \"how sure for these "
    "models\", not as a statement about all classifiers.",
)

# --- the stored evaluations -------------------------------------------------------------------------

entries = ui.checkpoints()
if not entries:
    st.info("No checkpoints yet. Train one on the Training jobs page or rebuild the zoo with models_zoo/build.sh.")
    st.stop()

RUNS = str(study.runs_dir())


@st.cache_data(show_spinner="Reading the stored evaluations…")
def collect(stamp: tuple, runs: str) -> study.Collection:  # stamp: every file read, with its mtime
    return study.collect([entries[name] for name, _ in stamp[0]], runs)


def stamp() -> tuple:
    files = []
    for path in study.evaluation_files(entries.values(), RUNS):
        try:
            files.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            pass
    return tuple((name, str(e.path)) for name, e in sorted(entries.items())), tuple(files)


try:
    files_stamp = stamp()
    data = collect(files_stamp, RUNS)
except Exception as err:  # noqa: BLE001 — a broken file must be a message, not a traceback
    st.error(f"Could not read the stored evaluations: {err}")
    st.stop()

datasets = sorted({m.dataset for m in data.models.values()})
if "study_protocol_next" in st.session_state:  # set by a finished computation (before the widget exists)
    st.session_state["study_protocol"] = st.session_state.pop("study_protocol_next")

top = st.columns([1, 3])
dataset = top[0].selectbox("Dataset", datasets, index=datasets.index("mnist5k") if "mnist5k" in datasets else 0,
                           key="study_dataset")
n_models = sum(1 for m in data.models.values() if m.dataset == dataset)
found = study.protocols(data, dataset)
try:
    quick = study.quick_config_for(data, dataset, entries.values())
    quick_config = quick.model_dump(mode="json")
    quick_id = study.protocol_id(quick_config)
except Exception as err:  # noqa: BLE001
    st.error(f"Could not build the quick evaluation for {dataset}: {err}")
    st.stop()
choices = {p["id"]: p for p in found}
choices.setdefault(quick_id, {"id": quick_id, "config": quick_config, "n_models": 0, "shipped": False})


def protocol_label(pid: str) -> str:
    p = choices[pid]
    kind = "zoo build" if p["shipped"] else "quick (computed here)" if pid == quick_id else f"stored {pid}"
    return f"{kind}: {p['n_models']} of {n_models} models — {study.describe_protocol(p['config'])}"


if st.session_state.get("study_protocol") not in choices:
    st.session_state.pop("study_protocol", None)
protocol = top[1].selectbox("Evaluation protocol (only numbers measured the same way are compared)", list(choices),
                            format_func=protocol_label, key="study_protocol")
config = choices[protocol]["config"]
measures = study.measures_in(config)
eps_options = sorted(float(e) for e in config.get("eps_list", []))

for key, valid in (("study_eps", eps_options), ("study_measure", measures)):
    if key in st.session_state and st.session_state[key] not in valid:  # left from another protocol
        del st.session_state[key]
c1, c2, c3 = st.columns(3)
if eps_options:
    eps = c1.selectbox("Classification robustness: PGD accuracy at ε", eps_options, index=len(eps_options) - 1,
                       format_func=lambda e: f"{e:g}", key="study_eps")
else:
    eps = None
if measures:
    measure = c2.selectbox("Explanation robustness", measures, key="study_measure",
                           format_func=lambda k: study.EXPLANATION_MEASURES[k].label,
                           help="; ".join(f"{study.EXPLANATION_MEASURES[k].label}: {study.EXPLANATION_MEASURES[k].help}"
                                          for k in measures))
else:
    measure = None
min_clean = c3.slider("Leave out models with clean accuracy below (%)", 0, 100, 50, 5,
                      help="a collapsed model (near chance accuracy) is robust to nothing and would dominate a "
                           "Pearson correlation; it is listed below, not hidden") / 100
with st.expander("Statistics and plot settings"):
    s1, s2, s3, s4 = st.columns(4)
    n_boot = s1.number_input("Bootstrap resamples (over models)", 200, 20000, 2000, 200)
    confidence = s2.selectbox("Confidence", [0.9, 0.95, 0.99], index=1, format_func=lambda c: f"{100 * c:.0f}%")
    seed = s3.number_input("Seed", 0, 10_000, 0)
    log_y = s4.checkbox("Log scale for explanation robustness", value=False)
    leave_out = st.multiselect("Leave out by hand", sorted(m for m, i in data.models.items() if i.dataset == dataset))
    common_pairs = st.checkbox("Score every model on the same pairs (those all models in the correlation kept)",
                               value=True, key="study_common_pairs",
                               help="each model's stored mean covers the pairs it kept its prediction on; this "
                                    "re-averages every model over the pairs common to all (needs result files)")

if eps is None or measure is None:
    st.info("This protocol measured no PGD accuracy or no explanation robustness; choose another one or compute "
            "the quick evaluation at the bottom of the page.")


@st.cache_data(show_spinner="Bootstrapping the correlations…")
def correlations(xs: tuple, ys: tuple, n_boot: int, confidence: float, seed: int) -> dict:
    return {m: study.correlation(xs, ys, m, n_boot=n_boot, confidence=confidence, seed=seed)
            for m in ("spearman", "pearson")}


@st.cache_data(show_spinner="Bootstrapping models and, within each, its pairs…")
def two_level(rows_json: str, measure: str, n_boot: int, confidence: float, seed: int) -> dict | None:
    return study.two_level_for_rows(json.loads(rows_json), measure, n_boot=n_boot, confidence=confidence, seed=seed)


@st.cache_data(show_spinner=False)
def measure_table(rows_json: str, measures: tuple, n_boot: int, confidence: float, seed: int) -> list:
    return study.correlation_table(json.loads(rows_json), measures, n_boot=n_boot, confidence=confidence, seed=seed)


rows = study.model_rows(data, dataset, protocol, eps if eps is not None else 0.0, measure or "le_end") \
    if eps is not None and measure is not None else []
used, left_out = study.split_rows(rows, min_clean, leave_out)
n_common = None
if common_pairs and measure:
    on_common = study.on_common_pairs(used, measure)
    if on_common:
        used, n_common = on_common
m_spec = study.EXPLANATION_MEASURES[measure] if measure else None

# --- 1. the scatter and its correlations ------------------------------------------------------------


def show_results() -> None:
    st.subheader("Classification robustness vs explanation robustness")
    xs = tuple(r["pgd_accuracy"] for r in used)
    ys = tuple(r["value"] for r in used)
    stats = correlations(xs, ys, int(n_boot), float(confidence), int(seed))
    plot_col, side = st.columns([3, 2], gap="large")
    for method, label in (("spearman", "Spearman ρ"), ("pearson", "Pearson r")):
        s = stats[method]
        side.metric(label, "–" if s["r"] is None else f"{s['r']:+.2f}")
        if s["r"] is not None:
            side.caption(f"{100 * confidence:.0f}% bootstrap CI [{s['ci_low']:.2f}, {s['ci_high']:.2f}] over "
                         f"{s['n_boot_valid']} resamples of the models · permutation p = {s['p']:.3g}"
                         f"{' (exact)' if s['p_exact'] else ''}")
            both = two_level(json.dumps(used, default=str), measure, int(n_boot), float(confidence), int(seed)) \
                if method == "spearman" else None
            if both and both["ci_low"] is not None:
                side.caption(f"with each model's own measurement error (two-level bootstrap: models, then each "
                             f"model's pairs and images): [{both['ci_low']:.2f}, {both['ci_high']:.2f}]")
        else:
            side.caption(s["note"] or "")
    side.metric("Models in the correlation", f"{len(used)} of {len(rows)}")
    side.caption(f"{len(left_out)} left out or missing (listed below)" if left_out else "every model")
    side.write(study.describe_correlation(stats["spearman"], m_spec.higher_is_robust)
               + ("" if m_spec.higher_is_robust else " (for this measure lower means more robust)"))
    points = pd.DataFrame([{
        "model": r["model"], "method": r["method"], f"PGD accuracy ε={eps:g}": r["pgd_accuracy"],
        m_spec.label: r["value"], "CI low": r["value_ci_low"], "CI high": r["value_ci_high"],
        "clean accuracy": r["clean_accuracy"], "source": r["source"]} for r in used])
    if used:
        fig = robustness_scatter_figure(
            [{"x": 100 * r["pgd_accuracy"], "y": r["value"], "y_low": r["value_ci_low"], "y_high": r["value_ci_high"],
              "label": r["name"], "group": r["method"]} for r in used],
            f"PGD accuracy at ε={eps:g} (%)", m_spec.label, log_y=log_y,
            title=("" if stats["spearman"]["r"] is None else
                   f"Spearman ρ = {stats['spearman']['r']:.2f}, Pearson r = {stats['pearson']['r']:.2f} "
                   f"(n = {len(used)})"))
        with plot_col:
            ui.show_figure(fig, "study_scatter", data=points)
            st.caption(f"Every model scored on the same {n_common} pairs; error bars ≈ 95% normal intervals of those "
                       "means." if n_common else "Error bars: the bootstrap CI of each model's mean over its own "
                       "attacked pairs (as stored; pairs differ between models).")
    if left_out:
        st.warning("Not in the correlation: " + "; ".join(f"**{r['model']}** — {r['reason']}" for r in left_out))

    with st.expander("Every model and its numbers", expanded=False):
        in_use = {r["model"]: r for r in used}
        table = pd.DataFrame([{
            "model": r["model"], "method": r["method"], "β": r["beta"], "λ": r["lam"],
            "clean acc %": study_views.pct(r["clean_accuracy"]), f"PGD acc % ε={eps:g}": study_views.pct(r["pgd_accuracy"]),
            m_spec.label: in_use.get(r["model"], r)["value"], "pairs": in_use.get(r["model"], {}).get("n_pairs"),
            "in correlation": r["model"] in in_use, "status": r["status"] if r["model"] in in_use else
            next(x["reason"] for x in left_out if x["model"] == r["model"]), "source": r["source"], "file": r["path"],
        } for r in rows])
        st.dataframe(table, hide_index=True, width="stretch")
        ui.downloads("study_models", data=table)

    st.markdown("**Every explanation measure of this protocol** (same models)")
    corr = pd.DataFrame(measure_table(json.dumps(used, default=str), tuple(measures), int(n_boot),
                                      float(confidence), int(seed)))
    st.dataframe(corr, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in corr.columns
                                if c not in ("measure", "higher is more robust", "n")})
    ui.downloads("study_correlations", data=corr)
    if "le_retained" in measures:
        st.caption("The paper warns that L_e end is driven by L_e start; compare its row with L_e end / L_e start, "
                   "which divides the starting distance out.")

    study_views.show_trades(rows, eps, m_spec)
    study_views.show_sep(rows, eps, min_clean, dataset)


if rows:
    try:
        show_results()
    except Exception as err:  # noqa: BLE001 — e.g. a hand-edited result file with odd values
        st.error(f"Could not show the study for this protocol: {err}")
study_views.show_claims(dataset, RUNS, (files_stamp, tuple((str(p), p.stat().st_mtime_ns) for p in
                                                       replicate.stored_files(dataset, RUNS) if p.is_file())))

for problem in data.problems:
    st.warning(problem)

# --- 4. compute missing evaluations ---------------------------------------------------------------------

study_views.show_measure(data, dataset, protocol, choices, quick, quick_id, RUNS, on_done=collect.clear)

ui.export_all("study")
