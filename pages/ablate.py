"""Ablate (what-if): switch a neuron set off (or scale it) and compare answers before / after, with a random control."""

from __future__ import annotations

import time

import streamlit as st

from app import artifacts, card_view, forms, resources, state, views
from app.progress import StreamlitProgress
from neurorit.data import examples_fingerprint
from neurorit.errors import NeuroritError
from neurorit.evaluation import ablate, answers_without_mask, what_if
from neurorit.masks import NeuronMask, random_like
from neurorit.neurons import SET_NAMES, NeuronSet, parse_neurons

SOURCES = ("From Explore (this session)", "Mined set (cache)", "Whole layer", "Hand-picked neurons")

st.title("Ablate (what-if)")
st.caption("Step 4: switch neurons off (scale 0), leave them (1) or amplify them (2), and see what the model answers.")

loaded = resources.require_model()
model, ident = loaded.model, loaded.identity
items = state.examples()
example = forms.example_picker(items)
if example is None:
    state.stop_run()
with st.sidebar:
    st.subheader("Evaluation")
    eval_config = forms.eval_form(state.prompt_config(), prefix="ablate")
if eval_config is None:
    state.stop_run()
results = state.results(loaded.key)

# ---- the unmasked answers, once per example: a what-if then only runs the masked side -----------
before_key = ("unmasked", examples_fingerprint([example]), eval_config.hash())
if before_key not in results:
    start = time.perf_counter()
    try:
        with st.spinner("Answering without a mask (once per example and views)…"), loaded.lock:
            results[before_key] = (answers_without_mask(model, example, eval_config), time.perf_counter() - start)
    except NeuroritError as exc:
        st.error(str(exc))
if before_key in results:
    unmasked, seconds = results[before_key]
    with st.expander(f"The model without a mask: {len(unmasked)} view(s), {seconds:.2f} s", expanded=False):
        st.dataframe(views.unmasked_frame(unmasked), hide_index=True)

# ---- what to switch off -----------------------------------------------------------------------
st.subheader("What to switch off")
source = st.radio("Neurons", SOURCES, horizontal=True, key=forms.init("w.ablate.source", SOURCES[0]))
base: NeuronSet | None = None  # what is shown; build(scale) makes its mask (NeuronMask's constructors)
build = None
try:
    if source == SOURCES[0]:
        shared = state.shared_set()
        if not shared or shared.get("model") != loaded.key:
            st.info("No Explore result for this model yet: run the preview or IG on the Explore page first, "
                    "or pick another source.")
        else:
            name = st.selectbox("Set", list(shared["sets"]), key=forms.init("w.ablate.explore_set", "irrelevant-exclusive"))
            base = shared["sets"][name].relabel(f"{name} of {shared['example_id']}")
            explore_set, explore_source = base, {
                "source": "explore", "example_id": shared["example_id"], "method": shared["method"],
                "selection": shared["rule"], "mining": shared["mining"], "set": name}
            build = lambda s: NeuronMask.silencing(explore_set, ident, scale=s, provenance=explore_source)  # noqa: E731
            st.caption(f"From the {shared['method']} result of example {shared['example_id']} on the Explore page.")
    elif source == SOURCES[1]:
        entries = [e for e in artifacts.list_mined() if artifacts.fits(e, n_layers=ident.n_layers, d_mlp=ident.d_mlp)]
        if not entries:
            st.info("No mining result for a model of this shape in the cache: run a job on the Mine page.")
        else:
            pick = st.selectbox("Mining result", range(len(entries)), format_func=lambda i: artifacts.mined_label(entries[i]),
                                key="ablate.mined")
            entry = entries[int(pick or 0)]
            name = st.selectbox("Set", list(SET_NAMES), key=forms.init("w.ablate.mined_set", "irrelevant-exclusive"))
            mined = resources.mined(entry.folder)
            base = mined.named_sets()[name].relabel(f"{name} (mined {entry.key[:10]})")
            build = lambda s: NeuronMask.from_mined(mined, name, scale=s)  # noqa: E731
    elif source == SOURCES[2]:
        layer = st.number_input("Layer", min_value=0, max_value=ident.n_layers - 1, step=1, key=forms.init("w.ablate.layer", 0))
        grid = NeuronSet.empty(ident.n_layers, ident.d_mlp).grid.clone()
        grid[int(layer)] = True
        base = NeuronSet(grid, f"layer {int(layer)}")
        build = lambda s: NeuronMask.from_layer(int(layer), ident, scale=s)  # noqa: E731
    else:
        text = st.text_input("Neurons as layer:index pairs", key=forms.init("w.ablate.neurons", ""), placeholder="3:17, 12:404")
        if text.strip():
            neurons = parse_neurons(text, ident.n_layers, ident.d_mlp)
            base = NeuronSet.from_neurons(neurons, ident.n_layers, ident.d_mlp, f"hand-picked ({len(neurons)})")
            build = lambda s: NeuronMask.from_neurons(neurons, ident, scale=s)  # noqa: E731
except NeuroritError as exc:
    st.error(str(exc))
    base = None

c1, c2, c3 = st.columns([2, 1, 2])
use_random = c1.checkbox("Random set of the same size instead", help="The same number of neurons in every layer, drawn at random: the control.",
                         key=forms.init("w.ablate.random", False))
seed = c2.number_input("Random seed", min_value=0, step=1, key=forms.init("w.ablate.seed", 0))
scale = c3.slider("Scale (0 = off, 1 = unchanged, 2 = amplified)", 0.0, 2.0, step=0.05, key=forms.init("w.ablate.scale", 0.0))
if base is None or build is None:
    state.stop_run()
neuron_set = random_like(base, seed=int(seed)) if use_random else base  # the draw NeuronMask.random_control makes
if not len(neuron_set):
    st.warning(f"The set {neuron_set.label!r} is empty: nothing to switch off. Loosen the selection rule on Explore.")
    state.stop_run()
try:
    mask = build(float(scale))
    if use_random:
        mask = mask.random_control(int(seed))
except NeuroritError as exc:
    st.error(str(exc))
    state.stop_run()
layers_hit = sum(1 for c in neuron_set.counts_per_layer() if c)
st.markdown(f"**{len(neuron_set)} neurons** in {layers_hit} layer(s) · `{neuron_set.label}` · scale **{scale:g}**")
if scale == 1.0:
    st.info("Scale 1 leaves every neuron unchanged: the answers after equal the answers before.")
with st.expander("Neurons per layer"):
    bar = card_view.selected_neuron(st.plotly_chart(card_view.clickable_bars(  # a bar opens its layer's first neuron
        views.set_counts_figure({"switched": neuron_set.counts_per_layer()}), [card_view.strongest_per_layer(neuron_set)],
        what="first"), key="ablate.counts", on_select="rerun", selection_mode="points"))
    st.caption("Click a bar to open the card of that layer's first switched neuron; every switched neuron is listed "
               "at the bottom of the page.")
    if bar is not None:
        st.switch_page(card_view.CARD_PAGE, query_params=card_view.card_query(bar))

# ---- one example --------------------------------------------------------------------------------
def show_whatif(w) -> None:  # type: ignore[no-untyped-def]
    st.markdown(f"**{w.view}** view")
    before, after = st.columns(2)
    for col, title, answer, ok, logprob, delta in (
        (before, "Before", w.answer_before, w.correct_before, w.logprob_before, None),
        (after, "After", w.answer_after, w.correct_after, w.logprob_after, w.logprob_after - w.logprob_before),
    ):
        with col.container(border=True):
            st.badge("correct" if ok else "incorrect", color="green" if ok else "red")
            st.markdown(f"{title}: **{answer or '(empty)'}**")
            st.metric("gold log-prob", f"{logprob:.3f}", delta=None if delta is None else f"{delta:+.3f}")


st.subheader("This example, before and after")
one_key = ("whatif", examples_fingerprint([example]), mask.key(), eval_config.hash())
if st.button("Run what-if", type="primary"):
    start, first = time.perf_counter(), None
    slots = {view: st.empty() for view in eval_config.views}
    answered: dict = {}
    try:
        with loaded.lock:
            for view in sorted(eval_config.views, key=lambda v: v != "noisy"):  # the view masks are for, first
                with slots[view].container(), st.spinner(f"Answering the {view} view with the mask…"):
                    answered[view] = what_if(model, example, mask, eval_config, views=(view,))
                first = first if first is not None else time.perf_counter() - start
                with slots[view].container():  # shown as soon as it is known
                    for w in answered[view]:
                        show_whatif(w)
        results[one_key] = ([w for v in eval_config.views for w in answered[v]], time.perf_counter() - start, first)
    except NeuroritError as exc:
        st.error(str(exc))
    for slot in slots.values():
        slot.empty()  # the full result is drawn below
if one_key in results:
    items_whatif, seconds, first = results[one_key]
    if not items_whatif:
        st.warning("The example cannot be shown under any chosen view (see the sidebar's views).")
    for w in items_whatif:
        show_whatif(w)
    st.dataframe(views.whatif_frame(items_whatif), hide_index=True)
    first_view = sorted(eval_config.views, key=lambda v: v != "noisy")[0]
    st.caption(f"Answered in {seconds:.2f} s (the {first_view} view, shown first, in {first:.2f} s).")

# ---- a small batch ------------------------------------------------------------------------------
st.subheader("A small batch, with the random control")
c1, c2 = st.columns(2)
if st.session_state.get("w.ablate.batch_n", 0) > len(items):  # a smaller dataset was loaded since
    st.session_state["w.ablate.batch_n"] = len(items)
n = c1.number_input("Examples (from the start of the dataset)", min_value=1, max_value=len(items), step=1,
                    key=forms.init("w.ablate.batch_n", min(8, len(items))))
control = c2.checkbox("Random control (same per-layer counts)", key=forms.init("w.ablate.control", True))
batch = items[: int(n)]
batch_key = ("ablation", examples_fingerprint(batch), mask.key(), eval_config.hash(), bool(control), int(seed))
if st.button(f"Run the batch ({len(batch)} examples)"):
    progress = StreamlitProgress("Ablation")
    try:
        with loaded.lock:
            results[batch_key] = ablate(model, batch, eval_config, mask, control_seed=int(seed) if control else None,
                                        on_progress=progress)
    except NeuroritError as exc:
        st.error(str(exc))
    progress.clear()
if batch_key in results:
    report = results[batch_key]
    table = report.table()
    st.plotly_chart(views.ablation_figure(table), key="ablate.figure")
    st.dataframe(table, hide_index=True)

# ---- save -------------------------------------------------------------------------------------
st.subheader("Keep this mask")
if st.button("Save the mask"):
    try:
        folder = artifacts.save_mask(mask)
        st.success(f"Saved mask {mask.key()} ({len(mask)} neurons, scale {scale:g}) to {folder}")
    except NeuroritError as exc:
        st.error(str(exc))

# ---- the switched neurons, each a click from its card ------------------------------------------
st.subheader("The switched neurons")
neuron_notes, notes_problem = card_view.table_notes(ident.fingerprint)
if notes_problem:
    st.warning(notes_problem)
switched = card_view.neurons_frame(neuron_set.neurons()[:500], neuron_notes)
row = card_view.selected_row_neuron(st.dataframe(switched, hide_index=True, key="ablate.neurons", on_select="rerun",
                                                 selection_mode="single-row", height=240), switched)
st.caption(f"{len(neuron_set)} neurons (at most 500 listed), note: your label. Click a row to open the neuron's card.")
if row is not None:
    st.switch_page(card_view.CARD_PAGE, query_params=card_view.card_query(row))
