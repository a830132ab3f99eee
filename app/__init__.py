"""UI-side helpers of the neurorit workbench (the Streamlit app in streamlit_app.py and pages/).

Modules: resources (the one cached model loader), state (session state), views (pure: artifact
-> plotly figure / DataFrame), artifacts (pure: cache listings, mask zip in/out), forms
(widgets -> config dataclasses), progress (st.progress adapter), jobs_client (background jobs).
The library `neurorit` never imports this package or streamlit.
"""
