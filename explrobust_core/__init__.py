"""explrobust_core: the engine behind the explrobust dashboard.

Pure Python + torch; never imports streamlit. Submodules are imported on demand so that
``import explrobust_core`` stays cheap (torch is loaded by the submodules that need it).
"""

__version__ = "0.1.0"
