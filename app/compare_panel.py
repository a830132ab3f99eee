"""The Mine page's "Compare two mined sets" panel: two cached mining results side by side.

Owns: the panel's widgets (keys `w.mine.compare.*`): pick A (the base) and B among the cached
mining results (`app.artifacts.list_mined`), then show the per-layer overlap and Jaccard index of
one set, the totals of every set, how A's irrelevant-exclusive neurons' mean IG scores moved under
B, and `neurorit.compare.comparison_figure`. Must not: compute the comparison itself
(neurorit.compare does) or load a model.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import artifacts, forms, resources
from neurorit.compare import compare_mined, comparison_figure
from neurorit.neurons import SET_NAMES
from neurorit.errors import NeuroritError

KEY_A, KEY_B, KEY_SET = "w.mine.compare.a", "w.mine.compare.b", "w.mine.compare.set"


def _label(entry: artifacts.Entry) -> str:
    model = entry.meta.get("model") or {}
    return f"{artifacts.mined_label(entry)} · {model.get('name', '?')} · weights {model.get('fingerprint', '?')}"


def render() -> None:
    """The panel, in an expander (closed by default)."""
    with st.expander("Compare two mined sets"):
        entries = [e for e in artifacts.list_mined() if not e.error]
        if len(entries) < 2:
            st.info("Comparing needs two mining results in the cache, e.g. the same examples mined on the base "
                    "model and on a trained checkpoint, or with two retrievers' noise.")
            return
        folders = [str(e.folder) for e in entries]
        labels = {str(e.folder): _label(e) for e in entries}
        for key, default in ((KEY_A, folders[0]), (KEY_B, folders[1])):
            if st.session_state.get(key) not in folders:  # first visit, or that result left the cache
                st.session_state[key] = default
        c1, c2, c3 = st.columns([2, 2, 1])
        a = c1.selectbox("A (the base)", folders, format_func=labels.get, key=KEY_A)
        b = c2.selectbox("B (e.g. mined on the trained checkpoint)", folders, format_func=labels.get, key=KEY_B)
        name = c3.selectbox("Set", SET_NAMES, key=forms.init(KEY_SET, "irrelevant-exclusive"))
        try:
            result = compare_mined(resources.mined(a), resources.mined(b), labels=(a, b))
        except NeuroritError as exc:
            st.error(f"Cannot compare these two: {exc}")
            return
        for note in result.notes:
            st.warning(note)
        st.caption(f"Examples: {len(result.example_ids_a)} in A, {len(result.example_ids_b)} in B, "
                   f"{result.shared_examples} shared. Jaccard = |A & B| / |A | B| (empty where neither has neurons).")
        c1, c2 = st.columns(2)
        with c1:
            st.markdown(f"**{name} per layer** (layers where A or B has neurons)")
            st.dataframe(result.table(name, nonempty=True).drop(columns="set"), hide_index=True)
        with c2:
            st.markdown("**Every set, whole grid**")
            st.dataframe(result.totals(), hide_index=True)
        st.plotly_chart(comparison_figure(result, name), key="mine.compare.figure")
        summary = result.shift_summary()
        if summary["n"]:
            st.markdown(
                f"A's **{summary['n']}** irrelevant-exclusive neurons, mean IG score under A → B: irrelevant view "
                f"{summary['irrelevant_a']:.4g} → {summary['irrelevant_b']:.4g}, relevant view "
                f"{summary['relevant_a']:.4g} → {summary['relevant_b']:.4g}; **{summary['still_in_b']}** still "
                "irrelevant-exclusive in B."
            )
            st.dataframe(result.shifts_frame(), hide_index=True)
        else:
            st.caption("A has no irrelevant-exclusive neurons: no attribution to compare.")
        st.markdown("**Read against** (irrelevant view, mean IG under A and B, ratio B / A): random sets with the "
                    "same per-layer counts, A's most attributed neurons, and the whole grid's scale.")
        st.dataframe(pd.DataFrame(result.references), hide_index=True)
