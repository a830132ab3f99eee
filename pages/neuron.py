"""The neuron card, at /neuron?n=layer:index: everything the workbench knows about one MLP neuron.

Top contexts and graded activation come from the activation index of the session's data (built on
request as a background job); what the neuron writes, its IG record, the masks holding it, its
activation over one prompt and the switch-off test come from the library directly; the note is
yours (neurorit.notes). Rendering is app/card_view.py; this page wires widgets.
"""

from __future__ import annotations

import dataclasses
import json

import streamlit as st

from app import artifacts, card_view, forms, jobs_client, resources, state
from neurorit import activations, notes, readout
from neurorit import neuron_card as cards
from neurorit.data import examples_fingerprint
from neurorit.errors import NeuroritError
from neurorit.masks import NeuronMask
from neurorit.models import BUNDLED_MODEL
from neurorit.neurons import parse_neuron
from neurorit.prompts import VIEWS

JOB_KEY = "neurorit.card.index_job"
FLASH_KEY = "neurorit.card.flash"
MAX_MINED = 10  # IG records read from the newest mining results of this model


def open_card(neuron: tuple[int, int]) -> None:
    st.switch_page(card_view.CARD_PAGE, query_params=card_view.card_query(neuron))


@st.cache_resource(max_entries=2, show_spinner=False)
def load_index(folder: str, mtime: float) -> activations.ActivationIndex:
    return activations.load_index(folder)


st.title("Neuron card")
loaded = resources.require_model()
model, ident = loaded.model, loaded.identity
results = state.results(loaded.key)

# ---- search: layer:index, or a token ------------------------------------------------------------
with st.form("card.search", clear_on_submit=True, border=False):
    c1, c2 = st.columns([5, 1], vertical_alignment="bottom")
    query = c1.text_input("Find a neuron", key="card.search.text", placeholder="15:821, or a token such as ' Sydney'",
                          help="layer:index opens that neuron; a token lists the neurons whose output weights promote it most.")
    found = c2.form_submit_button("Find")
current = st.query_params.get("n")
if found:
    kind = card_view.search_kind(query)
    if kind == "neuron":
        try:
            open_card(parse_neuron(query, ident.n_layers, ident.d_mlp))
        except NeuroritError as exc:
            st.error(str(exc))
    elif kind == "token":
        st.switch_page(card_view.CARD_PAGE, query_params={**({"n": current} if current else {}), "q": query})

token_query = st.query_params.get("q")
if token_query:
    try:
        promoting = readout.neurons_promoting(model, token_query, k=20)
    except NeuroritError as exc:
        st.error(str(exc))
    else:
        table_notes, _ = card_view.table_notes(ident.fingerprint)  # unreadable notes: the card below says why
        frame = card_view.neurons_frame(promoting.neurons, table_notes, extra={"logit_weight": promoting.weights})
        with st.expander(f"Neurons whose output weights promote {promoting.token!r} most", expanded=not current):
            if promoting.n_tokens > 1:
                st.caption(f"{token_query!r} is {promoting.n_tokens} tokens: searched by its first, {promoting.token!r}.")
            picked = card_view.selected_row_neuron(st.dataframe(
                frame, hide_index=True, key="card.search.results", on_select="rerun", selection_mode="single-row",
                column_config={"logit_weight": st.column_config.NumberColumn(format="%.4f")}), frame)
            st.caption("logit_weight: W_out[layer][neuron] · W_U[token] (final norm not applied). Click a row to open its card.")
            if picked is not None:
                open_card(picked)

if not current:
    st.info("Pick a neuron: type layer:index above (e.g. 1:5), or click a heatmap cell, a bar or a neuron table row "
            "on the Explore, Mine, Ablate or Masks page.")
    state.stop_run()
try:
    layer, index = parse_neuron(current, ident.n_layers, ident.d_mlp)
except NeuroritError as exc:
    st.error(f"Cannot open the card of {current!r}: {exc}")
    state.stop_run()
neuron = (layer, index)

try:
    note = notes.get_note(ident.fingerprint, neuron)
except NeuroritError as exc:
    note = None
    st.warning(f"Notes unavailable: {exc}")
st.subheader(f"Neuron {layer}:{index}" + (f" · {note.label}" if note and note.label else ""))
st.caption(f"{ident.name} · weights `{ident.fingerprint}` · this card's address: `{card_view.card_url(neuron)}`")
if FLASH_KEY in st.session_state:
    st.success(st.session_state.pop(FLASH_KEY))

# ---- the context: example and view -------------------------------------------------------------
items = state.examples()
prompt_config = state.prompt_config()
c1, c2 = st.columns([3, 1])
example = forms.example_picker(items, container=c1)
view = c2.selectbox("View", list(VIEWS), key=forms.init("w.card.view", "noisy"),
                    help="The prompt of the 'over one prompt' trace, the direct contribution and the switch-off test.")

# ---- the activation index of this model on the session's data ----------------------------------
wanted = card_view.wanted_index_key(ident, items, prompt_config)
folders = activations.find_indexes(model)
index_obj = None
if folders:
    metas = {}
    for folder in folders:
        try:
            metas[folder] = json.loads((folder / activations.INDEX_JSON).read_text())
        except (OSError, ValueError):
            metas[folder] = {}
    names = [f.name for f in folders]
    pick = st.selectbox("Activation index", range(len(folders)), index=names.index(wanted) if wanted in names else 0,
                        format_func=lambda i: card_view.index_label(folders[i], metas[folders[i]], wanted),
                        key=f"card.index.{wanted[:12]}")
    chosen = folders[int(pick or 0)]
    try:
        index_obj = load_index(str(chosen), (chosen / activations.INDEX_JSON).stat().st_mtime)
        index_obj.check_model(model)
    except (NeuroritError, OSError) as exc:
        st.error(f"Cannot read the activation index {chosen}: {exc}")
        index_obj = None


def index_job_panel() -> None:
    """Offer to build the index of the session's data as a background job, and follow the job."""
    n = len(items)
    mib = activations.bytes_per_neuron(n, len(activations.DEFAULT_VIEWS)) * ident.n_layers * ident.d_mlp / 2**20
    st.info(f"No activation index of this model on the current data ({state.dataset_label()}, {n} examples, this "
            f"prompt config). Top contexts and graded activation need one: one forward per example and view, about "
            f"{mib:,.1f} MiB on disk. The other sections below work without it.")
    if st.button(f"Build the activation index ({n} examples × {len(activations.DEFAULT_VIEWS)} views, background job)"):
        from neurorit import jobs  # the job table lives under the cache root: imported on use

        spec = state.model_spec()
        try:  # `neurorit index` reads the examples and the config's prompt section
            data, config = jobs_client.write_inputs(items, prompt_config)
            argv = card_view.index_argv(data, config, model=spec.name or BUNDLED_MODEL, device=spec.device,
                                        dtype=spec.dtype)
            st.session_state[JOB_KEY] = jobs.submit("index", argv).id
        except (NeuroritError, OSError) as exc:
            st.error(f"Could not start the job: {exc}")
    job_id = st.session_state.get(JOB_KEY)
    if not job_id:
        return
    try:
        first = jobs_client.get(job_id)
    except (NeuroritError, OSError) as exc:
        st.error(f"Cannot read job {job_id}: {exc}")
        return

    @st.fragment(run_every=None if jobs_client.is_final(first) else 1.0)
    def follow() -> None:
        job = jobs_client.get(job_id)
        st.progress(job.fraction if job.state != "done" else 1.0, text=f"index job {job.id}: {job.state} · "
                    f"{job.done}/{job.total} · {job.message or ''}")
        if job.error:
            st.error(job.error)
        if jobs_client.is_final(job) and not jobs_client.is_final(first):
            st.rerun()  # finished: redraw the card with its index

    follow()


# ---- compute the card (cached per neuron, index, example, view and artifacts) ------------------
mined_entries = [e for e in artifacts.list_mined() if artifacts.fits(e, fingerprint=ident.fingerprint)][:MAX_MINED]
mask_entries = [e for e in artifacts.list_masks() if not e.error and artifacts.fits(e, fingerprint=ident.fingerprint)]
card_key = ("card", neuron, index_obj.key() if index_obj else "", examples_fingerprint([example]) if example else "",
            view, prompt_config.hash(), tuple((e.key, e.mtime) for e in mined_entries),
            tuple((e.key, e.mtime) for e in mask_entries))
if card_key not in results:
    problems: list[str] = []
    ig_records, newest = [], None
    for entry in mined_entries:
        try:
            mined = resources.mined(entry.folder)
            ig_records.append((artifacts.mined_label(entry), cards.ig_record(mined, layer, index)))
            if newest is None:  # the card's own IG record: the newest readable mining result
                newest = mined
        except NeuroritError as exc:
            problems.append(f"mining result {entry.key[:10]}: {exc}")
    masks = {}
    for entry in mask_entries:
        try:
            masks[artifacts.mask_label(entry)] = NeuronMask.load(entry.folder)
        except NeuroritError as exc:
            problems.append(f"mask {entry.key[:10]}: {exc}")
    try:
        with st.spinner("Reading the neuron…"), loaded.lock:
            if index_obj is not None:
                card = cards.neuron_card(model, layer, index, activation_index=index_obj, mined=newest, masks=masks,
                                         prompt_config=prompt_config, view=view)
            else:
                promoted, suppressed = cards.token_effects(model, layer, index)
                card = cards.NeuronCard(
                    layer=layer, index=index, model=ident.name, fingerprint=ident.fingerprint, index_key="", n_examples=0,
                    contexts=(), by_view=(), by_region=(), rank_test=None, promoted=promoted, suppressed=suppressed,
                    direct=None, ig=cards.ig_record(newest, layer, index) if newest is not None else None,
                    masks=cards.mask_memberships(masks, layer, index), switch_off=None,
                    notes=("no activation index: no top contexts or graded activation",
                           "promoted / suppressed tokens and the direct effect use W_out . W_U without the final norm"))
            trace, trace_tokens = None, []
            if example is not None:
                try:
                    card = dataclasses.replace(card, direct=cards.direct_effect(
                        model, layer, index, example, view, prompt_config, index_obj))
                    trace = activations.neuron_activations_over_prompt(model, example, view, layer, index, prompt_config)
                    trace_tokens = [model.tokenizer.decode([t]) for t in trace.token_ids]
                except NeuroritError as exc:
                    problems.append(f"example {example.id}, {view} view: {exc}")
        results[card_key] = (card, trace, trace_tokens, ig_records, problems)
    except NeuroritError as exc:
        st.error(f"Cannot read neuron {layer}:{index}: {exc}")
        state.stop_run()
card, trace, trace_tokens, ig_records, problems = results[card_key]
for problem in problems:
    st.caption(f"skipped {problem}")

# ---- top-activating contexts -------------------------------------------------------------------
st.subheader("Top-activating contexts")
if wanted not in [f.name for f in folders]:
    if index_obj is not None:
        st.caption("The index chosen above was built on other data than the current dataset (or another prompt config).")
    index_job_panel()
if index_obj is not None:
    st.caption(f"From the activation index `{index_obj.key()[:10]}` ({index_obj.n_examples} examples; views "
               f"{', '.join(index_obj.views)}). Each token's background is this neuron's activation on it; hover for "
               "the value. The top token is outlined.")
    st.html(card_view.contexts_html(card.contexts))

    # ---- graded activation -------------------------------------------------------------------------
    st.subheader("Graded activation")
    c1, c2 = st.columns(2)
    c1.plotly_chart(card_view.by_view_figure(card.by_view), key="card.by_view")
    c2.plotly_chart(card_view.by_region_figure(card.by_region), key="card.by_region")
    st.markdown(card_view.rank_test_text(card.rank_test))

# ---- over one prompt ---------------------------------------------------------------------------
st.subheader("Over one prompt")
if trace is None:
    st.info("No prompt to trace: pick an example that has this view (see 'skipped' above).")
else:
    st.plotly_chart(card_view.trace_figure(trace.values.tolist(), trace.regions, trace.passages,
                                           title=f"Activation over the {view} prompt of {trace.example_id}"),
                    key="card.trace")
    with st.expander("The prompt, token by token", expanded=False):
        st.html(card_view.trace_html(trace_tokens, trace.values.tolist(), trace.regions, trace.passages))

# ---- what it writes ----------------------------------------------------------------------------
st.subheader("What it writes")
c1, c2 = st.columns(2)
c1.markdown("**Promoted tokens**")
c1.dataframe(card_view.effects_frame(card.promoted), hide_index=True)
c2.markdown("**Suppressed tokens**")
c2.dataframe(card_view.effects_frame(card.suppressed), hide_index=True)
st.caption("logit: W_out[layer][neuron] · W_U[token], the logit a unit activation adds (final norm not applied).")
st.markdown(card_view.direct_text(card.direct))

# ---- IG record and masks -------------------------------------------------------------------------
st.subheader("IG record")
if ig_records:
    st.dataframe(card_view.ig_frame(ig_records), hide_index=True)
    st.caption("ig_*: mean IG score over the mined examples per view; selected_*: fraction of examples whose view "
               "selected it; sets: the mined sets holding it.")
else:
    st.info("No mining result of this model in the cache (Mine page).")
if card.masks:
    st.dataframe(card_view.masks_frame(card.masks), hide_index=True)
else:
    st.caption("No saved mask scales this neuron.")

# ---- switch it off alone -----------------------------------------------------------------------
st.subheader("Switch it off alone")
c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
if st.session_state.get("w.card.n_switch", 0) > len(items):  # a smaller dataset was loaded since
    st.session_state["w.card.n_switch"] = max(1, len(items))
n_switch = int(c1.number_input("Examples", min_value=1, max_value=max(1, len(items)), step=1,
                               key=forms.init("w.card.n_switch", min(cards.N_SWITCH_OFF, max(1, len(items))))))
switch_key = ("switch_off", neuron, examples_fingerprint(items[:n_switch]), view, prompt_config.hash())
if c2.button(f"Switch it off alone ({n_switch} examples, {view} view)",
             help="The gold answer's log-prob with only this neuron zeroed, and with only a random neuron of the same "
                  "layer zeroed: three teacher-forced forwards per example."):
    try:
        with st.spinner("Switching it off…"), loaded.lock:
            results[switch_key] = (cards.switch_off_alone(model, layer, index, items[:n_switch], view=view,
                                                          prompt_config=prompt_config),)
    except NeuroritError as exc:
        st.error(str(exc))
if switch_key in results:
    card = dataclasses.replace(card, switch_off=results[switch_key][0])
if card.switch_off is not None:
    st.plotly_chart(card_view.switch_off_figure(card.switch_off, layer, index), key="card.switch_off")
    st.markdown(card_view.switch_off_text(card.switch_off))

# ---- your note ---------------------------------------------------------------------------------
st.subheader("Your note")
label_key, text_key = f"card.note.label.{layer}:{index}", f"card.note.text.{layer}:{index}"
with st.form(f"card.note.{layer}:{index}", border=False):
    label = st.text_input("Label", value=note.label if note else "", key=label_key, max_chars=notes.MAX_LABEL_CHARS,
                          help="Shown beside the neuron in every neuron table.")
    text = st.text_area("Note", value=note.text if note else "", key=text_key, max_chars=notes.MAX_TEXT_CHARS)
    saved = st.form_submit_button("Save the note")
if saved:
    try:
        kept = notes.save_note(ident.fingerprint, neuron, label, text)
        st.session_state[FLASH_KEY] = "Note saved." if kept else "Note deleted (empty)."
        st.rerun()
    except NeuroritError as exc:
        st.error(str(exc))
if note is not None and st.button("Delete the note"):
    notes.delete_note(ident.fingerprint, neuron)
    st.session_state.pop(label_key, None)
    st.session_state.pop(text_key, None)
    st.session_state[FLASH_KEY] = "Note deleted."
    st.rerun()

# ---- download ----------------------------------------------------------------------------------
st.subheader("Download")
c1, c2 = st.columns(2)
c1.download_button("Card as HTML (opens offline)", file_name=f"neuron-{layer}-{index}.html", mime="text/html",
                   on_click="ignore", key="card.download.html",
                   data=lambda: card_view.card_document(card, note=note, trace=trace, trace_tokens=trace_tokens,
                                                        ig_records=ig_records))
c2.download_button("Card as JSON", file_name=f"neuron-{layer}-{index}.json", mime="application/json",
                   on_click="ignore", key="card.download.json",
                   data=lambda: json.dumps(card_view.card_json(card, note=note, trace=trace), indent=2))
