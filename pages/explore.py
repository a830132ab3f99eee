"""Explore one example: preview / IG on its relevant and irrelevant view, answers, heatmaps, sets, top neurons."""

from __future__ import annotations

import time

import streamlit as st

from app import artifacts, card_view, forms, resources, state, views
from app import passages_panel
from app.progress import StreamlitProgress
from neurorit import readout
from neurorit.data import examples_fingerprint
from neurorit.errors import NeuroritError
from neurorit.decoding import answer_and_logprob
from neurorit.masks import NeuronMask
from neurorit.metrics import contains_answer
from neurorit.mining import prompt_for, score_example

ANSWER_VIEWS = ("relevant", "irrelevant", "noisy", "closed_book")

st.title("Explore one example")
st.caption("Step 2: which neurons carry this question's answer with relevant passages, and which with irrelevant ones.")

loaded = resources.require_model()
model, ident = loaded.model, loaded.identity
example = forms.example_picker(state.examples())
if example is None:
    state.stop_run()
prompt_config = state.prompt_config()

with st.sidebar:
    st.subheader("Attribution")
    mining = forms.mining_form(ident.n_layers, prefix="explore")
    st.subheader("Selection (per example)")
    rule = forms.selection_form(prefix="explore")
if mining is None or rule is None:
    state.stop_run()

n_rel, n_irr = len(example.relevant_passages), len(example.irrelevant_passages)
st.markdown(f"**Question:** {example.question}  \n**Gold:** {' / '.join(example.answers)} · "
            f"{n_rel} relevant and {n_irr} irrelevant passages")

results = state.results(loaded.key)
run_id = (examples_fingerprint([example]), prompt_config.hash(), mining.key())
keys = {"preview": ("explore", "preview", *run_id), "ig": ("explore", "ig", *run_id)}
answers_key = ("answers", *run_id[:2])


def run(method: str) -> None:
    """Score both views (cached on disk by the library), then answer under each view; store the result."""
    progress = StreamlitProgress("Preview" if method == "preview" else f"Integrated gradients (m = {mining.n_steps})")
    start = time.perf_counter()
    scores = {}
    for i, view in enumerate(("relevant", "irrelevant")):
        scores[view] = score_example(model, example, view, mining, prompt_config, preview=method == "preview",
                                     identity=ident, on_progress=progress.stage(i, 3, f"{view} view"))
        progress.stage(i, 3, f"{view} view")(1, 1, "done")
    if answers_key not in results:  # the answers depend on the example and the prompt only
        answers, skipped = [], []
        for j, view in enumerate(ANSWER_VIEWS):
            try:
                prompt = prompt_for(model, example, view, prompt_config)
            except NeuroritError as exc:
                skipped.append(f"{view}: {exc}")
                continue
            answer, logprob = answer_and_logprob(model, prompt)
            answers.append({"view": view, "answer": answer, "logprob": logprob, "n_tokens": prompt.n_tokens,
                            "correct": contains_answer(answer, example.answers)})
            progress.stage(2, 3, "answers")(j + 1, len(ANSWER_VIEWS), view)
        results[answers_key] = (answers, skipped)
    progress.clear()
    results[keys[method]] = {"method": method, "scores": scores, "seconds": time.perf_counter() - start,
                             "example_id": example.id}


c1, c2, _ = st.columns([1, 1, 2])
preview_clicked = c1.button("Run preview", help="One gradient per view (AtP-style): about a second on the bundled model.")
ig_clicked = c2.button(f"Run IG (m = {mining.n_steps})", type="primary",
                       help="Integrated Gradients on the relevant and the irrelevant view; cached, so a rerun is free. "
                            "Stop it with Streamlit's Stop button (top right).")
try:
    with loaded.lock:  # one session at a time runs the shared model
        if preview_clicked:
            run("preview")
        if ig_clicked:
            run("ig")
except NeuroritError as exc:
    st.error(str(exc))

available = [m for m in ("ig", "preview") if keys[m] in results]
if not available:
    st.info("Run the preview (fast, approximate) or IG (exact up to the completeness gap) to see the attributions.")
    state.stop_run()
shown = available[0]
if len(available) == 2:
    shown = st.radio("Show", available, horizontal=True, format_func=lambda m: {"ig": "IG", "preview": "preview"}[m],
                     key=forms.init("w.explore.shown", "ig"))
result = results[keys[shown]]
scores = result["scores"]
rel, irr = scores["relevant"], scores["irrelevant"]
label = "IG" if shown == "ig" else "preview"
st.caption(f"Showing the {label} result, computed in {result['seconds']:.1f} s on layers "
           f"{', '.join(map(str, rel.layers)) if len(rel.layers) < ident.n_layers else 'all'}.")

# ---- answers and health -----------------------------------------------------------------------
st.subheader("Answers and gold log-probabilities")
answers, skipped = results.get(answers_key, ([], []))
st.dataframe(views.answers_frame(answers), hide_index=True,
             column_config={"gold_logprob": st.column_config.NumberColumn(format="%.3f")})
for note in skipped:
    st.caption(f"skipped {note}")
cols = st.columns(2)
for col, (view, s) in zip(cols, scores.items()):
    health = views.gap_health(s)
    col.badge(f"{view} view: {health.label}", color=health.color)

# ---- heatmaps ---------------------------------------------------------------------------------
st.subheader("Attribution: layer × neuron")
tabs = st.tabs(["Relevant view", "Irrelevant view", "Irrelevant − relevant"])
clicked = []  # a click on a cell, a bar or a table row opens that neuron's card
for tab, grid, title, key in ((tabs[0], rel, f"{label} scores, relevant view", "heat.relevant"),
                              (tabs[1], irr, f"{label} scores, irrelevant view", "heat.irrelevant"),
                              (tabs[2], views.difference_grid(irr, rel), "irrelevant − relevant", "heat.diff")):
    with tab:
        clicked.append(card_view.selected_neuron(st.plotly_chart(
            card_view.clickable_heatmap(views.heatmap_figure(grid, title=title)), key=key, on_select="rerun",
            selection_mode="points")))
st.caption("Click a cell (or a bar, or a table row below) to open that neuron's card.")

# ---- sets -------------------------------------------------------------------------------------
st.subheader("Neuron sets of this example")
sets = views.example_sets(rel, irr, rule)
state.set_shared_set({"model": loaded.key, "example_id": example.id, "method": shown, "sets": sets,
                      "rule": rule.to_dict(), "mining": mining.to_dict()})
metrics = st.columns(len(sets))
for col, (name, s) in zip(metrics, sets.items()):
    col.metric(name, len(s))
strength = card_view.strength(rel, irr)  # a bar opens its layer's strongest neuron of that set
clicked.append(card_view.selected_neuron(st.plotly_chart(card_view.clickable_bars(
    views.set_counts_figure(sets, title="Neurons per layer (selection rule in the sidebar)"),
    [card_view.strongest_per_layer(s.grid, strength) for s in sets.values()]), key="counts", on_select="rerun",
    selection_mode="points")))

# ---- top neurons ------------------------------------------------------------------------------
st.subheader("Top neurons")
k = st.slider("How many", 5, 200, step=5, key=forms.init("w.explore.n_top", 25))
top = views.top_neurons(scores, k)
promo_key = ("promoted", ident.fingerprint, tuple(top))
if promo_key not in results:
    results[promo_key] = readout.promoted_tokens(model, top, k=5)
neuron_notes, notes_problem = card_view.table_notes(ident.fingerprint)
if notes_problem:
    st.warning(notes_problem)
top_frame = card_view.with_notes(views.top_neurons_frame(scores, k=k, promoted=results[promo_key]), neuron_notes)
clicked.append(card_view.selected_row_neuron(st.dataframe(
    top_frame, hide_index=True, key="explore.top", on_select="rerun", selection_mode="single-row",
    column_config={c: st.column_config.NumberColumn(format="%.4f") for c in
                   ("score_relevant", "score_irrelevant", "irrelevant_minus_relevant")},
), top_frame))
st.caption("top_tokens: the tokens each neuron's output weights raise most (W_out row projected through the unembedding). "
           "note: your label of the neuron (on its card). Click a column header to sort, a row to open the neuron's card.")
picked = next((n for n in clicked if n is not None), None)
if picked is not None:
    st.switch_page(card_view.CARD_PAGE, query_params=card_view.card_query(picked))

# ---- save -------------------------------------------------------------------------------------
st.subheader("Keep a set")
c1, c2 = st.columns([2, 1])
set_name = c1.selectbox("Set", list(sets), key=forms.init("w.explore.save_set", "irrelevant-exclusive"))
c1.caption("The Ablate page can switch this example's sets off directly (source: From Explore).")
if c2.button("Save as a mask (scale 0)"):
    chosen = sets[set_name]
    if not len(chosen):
        st.warning(f"The {set_name} set is empty: nothing to save. Loosen the selection rule.")
    else:
        mask = NeuronMask.silencing(chosen, ident, provenance={
            "source": "explore", "example_id": example.id, "method": shown, "mining": mining.to_dict(),
            "selection": rule.to_dict(), "prompt": prompt_config.to_dict()})
        try:
            folder = artifacts.save_mask(mask)
            st.success(f"Saved mask {mask.key()} ({len(mask)} neurons) to {folder}")
        except NeuroritError as exc:
            st.error(str(exc))

# ---- passages ---------------------------------------------------------------------------------
passages_panel.render(model, example, prompt_config, results=results, lock=loaded.lock, example_sets=sets)
