"""Mine a dataset: a background job scores every example's two views and selects the sets; results from the cache."""

from __future__ import annotations

import random

import streamlit as st

from app import artifacts, card_view, compare_panel, forms, jobs_client, resources, state, views
from app.progress import cancel_button, read_job_table
from neurorit.errors import NeuroritError
from neurorit.mining_spec import MiningSpec
from neurorit.models import BUNDLED_MODEL

JOB_KEY = "neurorit.mine.job"

st.title("Mine a dataset")
st.caption("Step 3: IG on the relevant and the irrelevant view of many examples, as a background job that keeps "
           "running when you leave the page. Neurons selected by enough examples form the sets.")

loaded = resources.require_model()
ident = loaded.identity
items = state.examples()

# ---- which examples ---------------------------------------------------------------------------
st.subheader("Examples")
which = st.radio("Use", ["all", "filter", "sample"], horizontal=True, key=forms.init("w.mine.which", "all"),
                 format_func={"all": "all examples", "filter": "a filter", "sample": "a random sample"}.get)
chosen = list(items)
if which == "filter":
    needle = st.text_input("Keep examples whose id or question contains", key=forms.init("w.mine.filter", "")).strip().lower()
    chosen = [e for e in items if needle in e.id.lower() or needle in e.question.lower()]
elif which == "sample":
    c1, c2 = st.columns(2)
    if st.session_state.get("w.mine.sample_n", 0) > len(items):
        st.session_state["w.mine.sample_n"] = len(items)
    size = c1.number_input("Sample size", min_value=1, max_value=len(items), step=1, key=forms.init("w.mine.sample_n", min(16, len(items))))
    seed = c2.number_input("Sample seed", min_value=0, step=1, key=forms.init("w.mine.sample_seed", 0))
    chosen = random.Random(int(seed)).sample(items, int(size))
usable = sum(1 for e in chosen if e.relevant_passages and e.irrelevant_passages)
st.caption(f"{len(chosen)} of {len(items)} examples from **{state.dataset_label()}**; {usable} have both a relevant and "
           "an irrelevant passage (the others are skipped).")

with st.sidebar:
    st.subheader("Attribution")
    mining = forms.mining_form(ident.n_layers, prefix="mine")
    options = forms.mining_options_form(prefix="mine")
    st.subheader("Selection")
    rule = forms.selection_form(prefix="mine", with_support=True)

if st.button(f"Start mining job ({usable} examples)", type="primary",
             disabled=not usable or mining is None or rule is None or options is None):
    model = state.model_spec()
    try:
        job = jobs_client.submit_mine(chosen, MiningSpec(
            model=model.name or BUNDLED_MODEL, device=model.device, dtype=model.dtype, prompt=state.prompt_config(),
            mining=mining, selection=rule, **options))
        st.session_state[JOB_KEY] = job.id
        st.toast(f"Job {job.id} submitted")
    except (NeuroritError, OSError) as exc:
        st.error(f"Could not start the job: {exc}")

# ---- jobs ---------------------------------------------------------------------------------------
st.subheader("Jobs")
jobs = read_job_table(jobs_client.list_jobs, key="mine.repair_jobs") or []
if not jobs:
    st.info("No mining job yet.")
else:
    ids = [j.id for j in jobs]
    if st.session_state.get(JOB_KEY) not in ids:
        st.session_state[JOB_KEY] = ids[0]
    job_id = st.selectbox("Job", ids, key=JOB_KEY, help="Newest first; the state below is live.")
    first = next(j for j in jobs if j.id == job_id)

    @st.fragment(run_every=None if jobs_client.is_final(first) else 1.0)
    def job_panel() -> None:
        try:
            job = jobs_client.get(job_id)
        except (NeuroritError, OSError) as exc:
            st.error(f"Cannot read job {job_id}: {exc}")
            return
        colors = {"queued": "gray", "running": "blue", "done": "green", "failed": "red", "cancelled": "orange"}
        st.badge(job.state, color=colors.get(job.state, "gray"))
        text = f"{job.done}/{job.total} · {job.message or job.state}"
        if job.eta_seconds is not None:
            text += f" · ETA {views.format_seconds(job.eta_seconds)}"
        st.progress(job.fraction if job.state != "done" else 1.0, text=text)
        if job.error:
            st.error(job.error)
        if not jobs_client.is_final(job):
            cancel_button(job.id, label="Cancel the job", key=f"cancel.{job.id}")
        elif not jobs_client.is_final(first):
            st.rerun()  # it just finished: redraw the page (results, no more polling)
        with st.expander("Log"):
            st.code(job.log_tail(30) or "(empty)", language=None)

    job_panel()
    with st.expander("All mining jobs"):
        st.dataframe(views.jobs_frame(jobs), hide_index=True)

# ---- results ------------------------------------------------------------------------------------
st.subheader("Results")
entries = [e for e in artifacts.list_mined() if artifacts.fits(e, n_layers=ident.n_layers, d_mlp=ident.d_mlp)]
if not entries:
    st.info("No mining result for this model in the cache yet.")
    state.stop_run()
default = 0
current = next((j for j in jobs if j.id == st.session_state.get(JOB_KEY)), None)
if current is not None and current.state == "done" and current.artifacts.get("mined"):
    folders = [str(e.folder) for e in entries]
    default = folders.index(current.artifacts["mined"]) if current.artifacts["mined"] in folders else 0
pick = st.selectbox("Mining result", range(len(entries)), index=default,
                    format_func=lambda i: artifacts.mined_label(entries[i]), key=f"mine.result.{default}")
entry = entries[int(pick or 0)]
try:
    mined = resources.mined(entry.folder)
except NeuroritError as exc:
    st.error(str(exc))
    state.stop_run()
if mined.model.fingerprint != ident.fingerprint:
    st.warning(f"Mined on {mined.model.name} weights {mined.model.fingerprint}, the loaded model has {ident.fingerprint}.")
st.markdown(f"**{mined.summary()}**")
gap = mined.provenance.get("max_relative_gap")
if gap is not None:
    color = "green" if gap < views.GAP_OK else "orange" if gap < views.GAP_WARN else "red"
    st.badge(f"completeness gap: median {mined.provenance.get('median_relative_gap', 0):.2%}, worst {gap:.2%}", color=color)
if mined.provenance.get("skipped"):
    st.caption(f"Skipped (lacking a view): {', '.join(mined.provenance['skipped'][:20])}")
named = mined.named_sets()  # a bar opens its layer's most often selected neuron of that set; a row, its neuron
clicked = [card_view.selected_neuron(st.plotly_chart(card_view.clickable_bars(
    views.set_counts_figure(mined.counts_per_layer(), title="Set sizes per layer"),
    [card_view.strongest_per_layer(named[n], *card_view.mined_strength(mined, n)) for n in named], what="most selected"),
    key="mine.counts", on_select="rerun", selection_mode="points"))]
set_name = st.selectbox("Neurons of the set", list(named), key=forms.init("w.mine.card_set", "irrelevant-exclusive"))
neuron_notes, notes_problem = card_view.table_notes(ident.fingerprint)
if notes_problem:
    st.warning(notes_problem)
set_frame = card_view.mined_neurons_frame(mined, set_name, neuron_notes)
clicked.append(card_view.selected_row_neuron(st.dataframe(
    set_frame, hide_index=True, key="mine.neurons", on_select="rerun", selection_mode="single-row", height=240), set_frame))
st.caption(f"{len(named[set_name])} neurons, most often selected first (at most 200 shown); selected_*: fraction of "
           "examples whose view selected it; ig_*: mean IG score; note: your label. Click a row or a bar to open a "
           "neuron's card.")
c1, c2 = st.columns(2)
with c1:
    overlap = [mined.relevant - mined.irrelevant, mined.relevant & mined.irrelevant, mined.irrelevant - mined.relevant]
    clicked.append(card_view.selected_neuron(st.plotly_chart(card_view.clickable_bars(
        views.overlap_figure(mined.relevant, mined.irrelevant, title="Overlap: relevant vs irrelevant"),
        [card_view.strongest_per_layer(part, *card_view.mined_strength(mined, name))
         for part, name in zip(overlap, ("relevant", "shared", "irrelevant"))], what="most selected"),
        key="mine.overlap", on_select="rerun", selection_mode="points")))
    st.dataframe(views.overlap_summary(mined.relevant, mined.irrelevant, names=("relevant", "irrelevant")), hide_index=True)
with c2:
    st.plotly_chart(views.stability_figure(mined), key="mine.stability")
    st.dataframe(views.stability_frame(mined), hide_index=True)
st.caption(f"Folder: `{entry.folder}`. The Ablate page can switch these sets off (source: Mined set).")
picked = next((n for n in clicked if n is not None), None)
if picked is not None:
    st.switch_page(card_view.CARD_PAGE, query_params=card_view.card_query(picked))
compare_panel.render()
