"""Overview: what the engine offers (registries) and which checkpoints are available."""

import streamlit as st

from explrobust_core.cli import info_report

from pages import ui

ui.page_header(
    "explrobust",
    "A workbench for one question: are classification robustness and explanation robustness of image "
    "classifiers really correlated? Below is what the engine offers and which trained models are shipped.",
    "Start on the Model zoo page to choose models, then attack their explanations in the Attack lab, or go "
    "straight to the Robustness study for the answer on the shipped zoo.",
)


@st.cache_data(show_spinner="Reading the registries…")
def _report():
    return info_report()


report = _report()
titles = {"datasets": "Datasets", "architectures": "Architectures", "explainers": "Explanation methods",
          "metrics": "Comparison metrics", "classification_attacks": "Attacks on predictions",
          "explanation_attacks": "Attacks on explanations", "training_objectives": "Training objectives"}
for col, (key, title) in zip(st.columns(2) + st.columns(2) + st.columns(2) + st.columns(2), titles.items()):
    with col:
        st.subheader(title)
        st.dataframe(
            [{"name": e["name"], "summary": e["summary"], "tags": ", ".join(e["tags"])} for e in report[key]],
            hide_index=True, width="stretch",
        )

st.subheader("Model zoo")
if report["zoo"]:
    st.dataframe(report["zoo"], hide_index=True, width="stretch")
else:
    st.info("No checkpoints yet: shipped ones go to models_zoo/<dataset>/, user-trained ones to the user zoo.")
st.caption(" · ".join(f"{k} {v}" for k, v in report["versions"].items()))
