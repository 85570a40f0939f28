"""Model zoo: every checkpoint's card and measured metrics; choose the models the other pages use."""

import pandas as pd
import streamlit as st

from pages import ui

st.title("Model zoo")
entries = ui.checkpoints()
if not entries:
    st.info("No checkpoints yet. Train one with `explrobust train` or rebuild the zoo with models_zoo/build.sh.")
    st.stop()


def row(name: str, entry) -> dict:
    card = entry.card
    summary = (card.metrics.get("evaluation") or {}).get("summary", {})
    pgd = {round(r["eps"], 4): r["accuracy"] for r in summary.get("pgd_accuracy", [])}
    expl = summary.get("explanation", {})
    le = lambda key: (expl.get(key) or {}).get("mean")  # noqa: E731
    return {"model": name, "objective": card.objective, "architecture": card.architecture,
            "clean acc": summary.get("clean_accuracy"), "PGD acc ε=0.3": pgd.get(0.3),
            "L_e start ×1e-7": le("explanation_loss_start_paper"), "L_e end ×1e-7": le("explanation_loss_end_paper"),
            "epochs": card.epochs, "train time (s)": card.wall_time_s,
            "source": "shipped" if str(entry.path).startswith(str(ui.shipped_zoo_dir())) else "user"}


table = pd.DataFrame([row(name, e) for name, e in entries.items()])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"clean acc": st.column_config.NumberColumn(format="percent"),
                            "PGD acc ε=0.3": st.column_config.NumberColumn(format="percent")})
ui.selection_widget(list(entries))

with st.expander("Model cards"):
    name = st.selectbox("Card", list(entries))
    st.json(entries[name].card.model_dump(mode="json"), expanded=False)

for entry in ui.broken_checkpoints():
    st.warning(f"{entry.path}: {entry.error}")
