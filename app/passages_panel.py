"""The Explore page's "Which passage drives the answer" section.

Owns: the section's widgets (keys `w.explore.passages.*`): the neuron set whose activations are
read per passage (none, one of this example's Explore sets, or a set of a cached mining result for
a model of this shape), the IG step count, and the button that runs
`neurorit.passages.attribute_passages` (leave-one-out and IG cost forwards: nothing runs before
the press; results are kept per model in the session). Shows the per-passage table, the bars and
the token heat (app.passages_view) and the top neurons per passage. Must not: compute
attributions itself, or write prompt text into the page as HTML unescaped.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import streamlit as st

from app import artifacts, forms, passages_view, resources
from app.progress import StreamlitProgress
from neurorit.configs import stable_hash
from neurorit.data import RagExample, examples_fingerprint
from neurorit.errors import NeuroritError
from neurorit.neurons import SET_NAMES, NeuronSet
from neurorit.passages import PassageAttribution, PassageConfig, attribute_passages
from neurorit.prompts import PromptConfig

KEY = "w.explore.passages"
NO_SET, EXAMPLE_SETS = "No neurons", "This example's sets (Explore)"


def _neuron_choice(n_layers: int, d_mlp: int, example_sets: Mapping[str, NeuronSet] | None) -> NeuronSet | None:
    """The set picked in the section's widgets (None: no neurons); a bad mining result is an st.error."""
    entries = [e for e in artifacts.list_mined() if not e.error and artifacts.fits(e, n_layers=n_layers, d_mlp=d_mlp)]
    sources = [NO_SET] + ([EXAMPLE_SETS] if example_sets else []) + [str(e.folder) for e in entries]
    labels = {str(e.folder): f"mined {artifacts.mined_label(e)}" for e in entries}
    keys = {str(e.folder): e.key for e in entries}
    if st.session_state.get(f"{KEY}.source") not in sources:
        st.session_state[f"{KEY}.source"] = str(entries[0].folder) if entries else sources[min(1, len(sources) - 1)]
    c1, c2 = st.columns([3, 2])
    source = c1.selectbox("Neurons read on each passage", sources, format_func=lambda s: labels.get(s, s),
                          key=f"{KEY}.source")
    if source == NO_SET:
        return None
    name = c2.selectbox("Set", list(SET_NAMES), key=forms.init(f"{KEY}.set", "irrelevant-exclusive"))
    if source == EXAMPLE_SETS:
        return example_sets[name].relabel(f"{name} of this example")  # type: ignore[index]
    try:
        return resources.mined(source).named_sets()[name].relabel(f"{name} (mined {keys[source][:10]})")
    except NeuroritError as exc:
        st.error(f"Cannot read that mining result: {exc}")
        return None


def _show(result: PassageAttribution, *, k: int) -> None:
    st.dataframe(result.table(), hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.4f") for c in ("loo_delta", "ig_sum", "share")})
    health = passages_view.gap_health(result)
    st.badge(health.label, color=health.color)
    st.caption(
        f"Gold answer log-prob with every passage: {result.logprob:.4f}. loo_delta: how much lower it is without "
        "the passage. ig_sum: the IG of the passage's tokens; share: its |ig_sum| over all passages' |ig_sum|. "
        f"Over the whole prompt the IG sums to {float(result.token_ig.sum()):.4f}, f(x) − f(x') = "
        f"{result.f_input - result.f_baseline:.4f} ({result.config.get('baseline')} baseline over the "
        f"{result.config.get('scope')}, {result.config.get('steps_used')} nodes in "
        f"{len(result.config.get('intervals', []))} intervals)."
    )
    st.plotly_chart(passages_view.passage_bars_figure(result), key="explore.passages.bars")
    st.markdown("**Token heat over the prompt** (green raises the gold answer's log-prob, magenta lowers it; "
                "hover a token for its IG)")
    st.html(passages_view.token_heat_html(result))  # every token escaped by the view
    if result.neurons:
        st.markdown(f"**Top neurons of {result.neuron_set} per passage** (largest |mean activation| over the "
                    f"passage's tokens; {len(result.neurons)} neurons in the set)")
        st.dataframe(result.top_neurons(k), hide_index=True,
                     column_config={"mean_activation": st.column_config.NumberColumn(format="%.4f")})


def render(
    model: Any,
    example: RagExample,
    prompt_config: PromptConfig,
    *,
    results: dict[Any, Any],
    lock: Any = None,
    example_sets: Mapping[str, NeuronSet] | None = None,
) -> None:
    """The section: settings, the button, then the last result for this example and settings.

    results: the session's results of this model (app.state.results); lock: the model's lock (one
    session at a time runs it); example_sets: this example's Explore sets, offered as a source.
    """
    st.subheader("Which passage drives the answer")
    st.caption("Each passage of the noisy view (the relevant passage among the distractors): how much the gold "
               "answer's log-prob drops without it (leave one out, one forward per passage), and its tokens' "
               "Integrated Gradients over its tokens' input embeddings (from the prompt with every passage "
               "blanked to the pad token's embedding; refined until the completeness gap is within 1 %).")
    if not example.relevant_passages:
        st.info("This example has no relevant passage, so it has no noisy view to attribute.")
        return
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    neurons = _neuron_choice(n_layers, d_mlp, example_sets)
    c1, c2, _ = st.columns([1, 1, 2])
    n_steps = int(c1.number_input("IG steps", min_value=1, max_value=512, step=8, key=forms.init(f"{KEY}.n_steps", 32),
                                  help="Nodes of the first pass (intervals of 8 Gauss-Legendre nodes), each a forward "
                                       "and a backward over the prompt; intervals that miss completeness are then "
                                       "bisected, up to 512 nodes."))
    k = int(c2.number_input("Top neurons per passage", min_value=1, max_value=50, key=forms.init(f"{KEY}.k", 5)))
    config = PassageConfig(n_steps=n_steps)
    key = ("passages", examples_fingerprint([example]), prompt_config.hash(), stable_hash(config.to_dict()),
           stable_hash(neurons.neurons()) if neurons is not None else None)
    if st.button("Compute passage attributions", help="Leave-one-out and IG on this example's noisy view: "
                 f"{len(example.passages) + 1} forwards, then {n_steps} or more forward-backward passes."):
        progress = StreamlitProgress("Which passage drives the answer")
        try:
            with lock if lock is not None else contextlib.nullcontext():
                results[key] = attribute_passages(model, example, prompt_config, config, neurons=neurons,
                                                  on_progress=progress)
        except NeuroritError as exc:
            st.error(str(exc))
        finally:
            progress.clear()
    result = results.get(key)
    if result is None:
        st.info("Press the button to attribute the answer to the passages (costs forwards on the model).")
        return
    _show(result, k=k)
