"""explrobust dashboard entry: page config, navigation over pages/, shared sidebar."""

import streamlit as st

st.set_page_config(page_title="explrobust", page_icon="🔍", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon="🏠", default=True),
    st.Page("pages/zoo.py", title="Model zoo", icon="🗂️"),
    st.Page("pages/explorer.py", title="Explorer", icon="🔎"),
]
nav = st.navigation(pages)
st.sidebar.caption("explrobust — are classification robustness and explanation robustness really correlated?")
nav.run()
