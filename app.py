"""explrobust dashboard entry: page config, navigation over pages/, shared sidebar."""

import streamlit as st

st.set_page_config(page_title="explrobust", page_icon=":material/troubleshoot:", layout="wide")

pages = {
    "Start": [
        st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("pages/zoo.py", title="Model zoo", icon=":material/inventory_2:"),
    ],
    "Explore": [
        st.Page("pages/explorer.py", title="Explorer", icon=":material/image_search:"),
        st.Page("pages/attack_lab.py", title="Attack lab", icon=":material/target:"),
        st.Page("pages/classification.py", title="Classification robustness", icon=":material/shield:"),
        st.Page("pages/clusters.py", title="Clusters", icon=":material/bubble_chart:"),
        st.Page("pages/landscape.py", title="Loss landscape", icon=":material/landscape:"),
    ],
    "Study": [
        st.Page("pages/study.py", title="Robustness study", icon=":material/scatter_plot:"),
        st.Page("pages/training.py", title="Training jobs", icon=":material/model_training:"),
    ],
}
nav = st.navigation(pages)
st.sidebar.caption("explrobust — are classification robustness and explanation robustness really correlated?")
nav.run()
