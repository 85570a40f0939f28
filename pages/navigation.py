"""The dashboard's navigation: page config, the sections of pages and the shared sidebar (app.py runs it).

Not a page itself. ``ui.page_header`` also draws it when Streamlit has run a page through its legacy
folder-based navigation (a deep link opened first on a fresh server), so the user always sees these sections.
"""

import streamlit as st

from explrobust_core.cpu_memory import reuse_freed_memory


def navigation():
    """Set up the page and draw the navigation; returns the page the URL asks for (``.run()`` it)."""
    reuse_freed_memory()  # the server process's setting (idempotent): attacks and maps allocate less fresh memory
    st.set_page_config(page_title="explrobust", page_icon=":material/troubleshoot:", layout="wide")
    sections = {
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
    page = st.navigation(sections)
    st.sidebar.caption("explrobust — are classification robustness and explanation robustness really correlated?")
    return page
