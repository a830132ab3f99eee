"""The neurorit workbench: `streamlit run streamlit_app.py --server.address 127.0.0.1`.

One page per step of the data flow (pages/): model & data -> explore one example -> mine a dataset
-> ablate -> masks -> train (Neuro-RIT and the baselines as background jobs), and a card per neuron
(/neuron?n=layer:index) that a click on any heatmap cell, per-layer bar or neuron table row opens,
as does the sidebar's search box on every page. Defaults come from
NEURORIT_MODEL (a local model folder or cached hub name; unset = the bundled
SmolLM2-135M-Instruct), NEURORIT_DEVICE and NEURORIT_DTYPE.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import streamlit as st

from app import card_view
from app.forms import keep_widget_state
from app.state import mark_run_finished

ROOT = Path(__file__).resolve().parent  # pages/ beside this file; Streamlit puts this folder on sys.path itself

st.set_page_config(page_title="neurorit workbench", page_icon=":material/neurology:", layout="wide")
keep_widget_state()

PAGES = {
    "Workbench": [
        st.Page(str(ROOT / "pages" / "model_data.py"), title="Model & data", icon=":material/database:", url_path="model-data", default=True),
        st.Page(str(ROOT / "pages" / "explore.py"), title="Explore one example", icon=":material/biotech:", url_path="explore"),
        st.Page(str(ROOT / "pages" / "mine.py"), title="Mine a dataset", icon=":material/construction:", url_path="mine"),
        st.Page(str(ROOT / "pages" / "ablate.py"), title="Ablate (what-if)", icon=":material/content_cut:", url_path="ablate"),
        st.Page(str(ROOT / "pages" / "masks.py"), title="Masks", icon=":material/masks:", url_path="masks"),
        st.Page(str(ROOT / "pages" / "neuron.py"), title="Neuron card", icon=":material/neurology:", url_path="neuron"),
        st.Page(str(ROOT / "pages" / "train.py"), title="Train", icon=":material/model_training:", url_path="train"),
        st.Page(str(ROOT / "pages" / "studies.py"), title="Studies", icon=":material/query_stats:", url_path="studies"),
    ],
}

try:
    page = st.navigation(PAGES)
    with st.sidebar.form("neurorit.search", clear_on_submit=True, border=False):  # on every page
        query = st.text_input("Go to a neuron", placeholder="15:821, or ' Sydney'", key="neurorit.search.text",
                              help="layer:index opens its card; a token lists the neurons that promote it most.")
        if st.form_submit_button("Open its card") and query.strip():  # the card page checks the neuron
            kind = card_view.search_kind(query)
            st.switch_page(card_view.CARD_PAGE, query_params={"n": query.strip()} if kind == "neuron" else {"q": query})
    page.run()
except Exception as exc:  # noqa: BLE001  the last resort: a message, never a traceback
    logging.getLogger("neurorit.app").exception("a page failed")
    st.error(f"Something went wrong: {type(exc).__name__}: {exc}. The details are in the server log.")
mark_run_finished()  # pages that end early report it themselves (state.stop_run); st.rerun() runs on
