"""Model & data: pick the model and the dataset, pick and edit an example, see the exact prompt."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from app import forms, resources, state, views
from app import retrieval as app_retrieval
from app.progress import StreamlitProgress
from neurorit.data import FORMATS, demo_examples, load_examples
from neurorit.errors import NeuroritError
from neurorit.models import BUNDLED_MODEL
from neurorit.prompts import VIEWS, add_distractors, build_prompt
from neurorit.retrieval import with_retrieved

MAX_UPLOAD_MB = 50  # also server.maxUploadSize in .streamlit/config.toml

st.title("Model & data")
st.caption("Step 1: the model, the questions and their passages. Everything else reads what you pick here.")

# ---- model --------------------------------------------------------------------------------------
st.header("Model")
spec = state.model_spec()
DEVICES, DTYPES = ["auto", "cpu", "cuda", "mps"], ["auto", "float32", "bfloat16", "float16"]
with st.form("model"):
    kind = st.radio("Model", [f"Bundled {BUNDLED_MODEL}", "Local folder or cached hub name"],
                    index=0 if spec.name is None else 1, horizontal=True)
    name = st.text_input("Folder path or hub name", value=spec.name or "",
                         placeholder="/path/to/hf-model-folder or org/name (must already be in the local HF cache)")
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", DEVICES, index=DEVICES.index(spec.device) if spec.device in DEVICES else 0,
                          help="auto: CUDA when present, else CPU.")
    dtype = c2.selectbox("Precision", DTYPES, index=DTYPES.index(spec.dtype) if spec.dtype in DTYPES else 0,
                         help="auto: bfloat16 on a GPU that supports it, else float32. IG always integrates in float32.")
    load_clicked = st.form_submit_button("Load model", type="primary")
if load_clicked:
    bundled = kind.startswith("Bundled")
    if not bundled and not name.strip():
        st.error("Type a model folder path or the name of a model in the local Hugging Face cache.")
    elif state.set_model_spec(state.ModelSpec(None if bundled else name.strip(), device, dtype)):
        st.toast("Model changed: results of the previous model were cleared.")

loaded = resources.current_model()
if loaded is not None:
    ident = loaded.identity
    st.success(
        f"Loaded **{ident.describe()}** on {loaded.device} ({loaded.dtype}) in {loaded.seconds:.1f} s · "
        f"context {loaded.n_ctx} tokens · weights `{ident.fingerprint}`"
    )

# ---- dataset ------------------------------------------------------------------------------------
st.header("Dataset")
source = st.radio("Source", ["Demo set", "File on disk", "Upload"], horizontal=True,
                  key=forms.init("w.data.source", "Demo set"))
if source == "Demo set":
    st.caption("General-knowledge questions shipped with neurorit, each with 1 relevant and 4-5 irrelevant passages.")
    if st.button("Load the demo set", type="primary"):
        state.set_examples(demo_examples(), "demo set")
else:
    fmt = st.selectbox("Format", ["detect", *FORMATS], key=forms.init("w.data.format", "detect"))
    limit = st.number_input("Keep the first N examples (0 = all)", min_value=0, step=10, key=forms.init("w.data.limit", 0))
    fmt_arg, limit_arg = (None if fmt == "detect" else fmt), (int(limit) or None)
    if source == "File on disk":
        path = st.text_input("Dataset file (.jsonl or .jsonl.gz)", key=forms.init("w.data.path", ""))
        if st.button("Load the file", type="primary"):
            try:
                items = load_examples(Path(path.strip()).expanduser(), fmt_arg, limit=limit_arg)
                if not items:
                    raise NeuroritError(f"{path} holds no examples.")
                state.set_examples(items, f"{Path(path).name} ({len(items)} examples)")
            except NeuroritError as exc:
                st.error(str(exc))
    else:
        upload = st.file_uploader(f"Dataset (.jsonl or .jsonl.gz, at most {MAX_UPLOAD_MB} MB; JSON lines only)",
                                  type=["jsonl", "gz", "json"], key="upload.dataset")
        if upload is not None and st.button("Load the upload", type="primary"):
            data = upload.getvalue()
            try:
                if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
                    raise NeuroritError(f"{upload.name} is {len(data) / 2**20:.0f} MB, over the {MAX_UPLOAD_MB} MB limit.")
                suffix = ".jsonl.gz" if upload.name.endswith(".gz") else ".jsonl"
                with tempfile.TemporaryDirectory(prefix="neurorit-data-") as tmp:
                    # keep the uploaded name: format detection reads hints from it
                    file = Path(tmp) / (Path(upload.name).name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json") + suffix)
                    file.write_bytes(data)
                    items = load_examples(file, fmt_arg, limit=limit_arg)
                if not items:
                    raise NeuroritError(f"{upload.name} holds no examples.")
                state.set_examples(items, f"{upload.name} ({len(items)} examples)")
            except NeuroritError as exc:
                st.error(str(exc))

items = state.examples()
st.info(f"Loaded: **{state.dataset_label()}** · {len(items)} examples")

# ---- example ------------------------------------------------------------------------------------
st.header("Example")
example = forms.example_picker(items)
if example is None:
    state.stop_run()
original = state.original_example()
if original is not None and original != example:
    st.caption("This example has unsaved edits relative to the dataset (kept for this session).")

version_key = "neurorit.editor_version"
version = st.session_state.setdefault(version_key, 0)
with st.form(f"edit.{example.id}.{version}"):
    question = st.text_input("Question", value=example.question)
    answers = st.text_area("Gold answers (one alias per line; the first is the target)", value="\n".join(example.answers), height=90)
    st.caption("Passages: tick **relevant** for passages that contain or support the answer. Change **order** to "
               "reorder; add a row for a new passage; clear a row's text to delete it.")
    table = st.data_editor(
        views.passages_frame(example), num_rows="dynamic", hide_index=True, key=f"passages.{example.id}.{version}",
        column_config={
            "order": st.column_config.NumberColumn("order", min_value=0, step=1, width="small"),
            "relevant": st.column_config.CheckboxColumn("relevant", width="small"),
            "title": st.column_config.TextColumn("title", width="medium"),
            "text": st.column_config.TextColumn("text", width="large"),
        },
    )
    apply_clicked = st.form_submit_button("Apply edits", type="primary")
if apply_clicked:
    try:
        state.replace_example(views.example_from_edit(example, question, answers, table))
        st.session_state[version_key] = version + 1
        st.rerun()
    except NeuroritError as exc:
        st.error(f"Not applied: {exc}")

c1, c2 = st.columns(2)
if c1.button("Add a distractor from the dataset", help="An irrelevant passage from another example that does not contain the answer."):
    added = add_distractors(items, 1, seed=version)[state.example_index()]
    if len(added.passages) == len(example.passages):
        st.warning("No passage of the other examples is usable as a distractor for this one.")
    else:
        state.replace_example(added)
        st.session_state[version_key] = version + 1
        st.rerun()
if c2.button("Revert to the dataset's version", disabled=original is None or original == example):
    state.replace_example(original)
    st.session_state[version_key] = version + 1
    st.rerun()

# ---- retrieval ----------------------------------------------------------------------------------
st.header("Retrieve passages")
st.caption("Rank a corpus's passages for the question with BM25, dense (all-MiniLM-L6-v2), SPLADE or their "
           "reciprocal-rank fusion; relevant = the passage mentions a gold answer. The first search over a corpus "
           "builds its index (dense and SPLADE take minutes over Wikipedia on a CPU), later ones reload it.")
with st.form(f"retrieve.{example.id}"):
    r_question = st.text_input("Query (default: the example's question)", value=example.question)
    c1, c2, c3 = st.columns([3, 2, 1])
    r_corpora = c1.multiselect("Corpus", list(app_retrieval.CORPORA),
                               key=forms.init("w.retrieve.corpus", [next(iter(app_retrieval.CORPORA))]))
    r_name = c2.selectbox("Retriever", app_retrieval.RETRIEVER_CHOICES, key=forms.init("w.retrieve.retriever", "bm25"),
                          help="hybrid = bm25+dense fused by reciprocal rank (k = 60).")
    r_k = c3.number_input("k", min_value=1, max_value=50, step=1, key=forms.init("w.retrieve.k", 5))
    retrieve_clicked = st.form_submit_button("Retrieve")
if retrieve_clicked:
    try:
        if not r_corpora or not r_question.strip():
            raise NeuroritError("Pick at least one corpus and type a query.")
        r_corpus = app_retrieval.corpus(r_corpora, items, state.dataset_label())
        bar = StreamlitProgress(f"Index of {r_corpus.name}")
        r_retriever = app_retrieval.retriever(r_corpus, r_name, bar)
        bar.clear()
        st.session_state["neurorit.retrieved"] = {
            "example": example.id, "question": r_question, "corpus": r_corpus, "retriever": r_retriever,
            "hits": r_retriever.search([r_question], int(r_k))[0]}
    except NeuroritError as exc:
        st.error(str(exc))
found = st.session_state.get("neurorit.retrieved")
if found and found["example"] == example.id:
    st.caption(f"{found['retriever'].name} over {found['corpus'].name} ({len(found['corpus'])} passages), "
               f"query {found['question']!r}:")
    st.dataframe(app_retrieval.hits_frame(found["corpus"], found["hits"], example.answers), hide_index=True,
                 column_config={"text": st.column_config.TextColumn("text", width="large")})
    if st.button("Use these passages as the example's context",
                 help="Replaces the example's passages with the ranking above (flags as shown); revert restores them."):
        state.replace_example(with_retrieved(example, found["corpus"], found["hits"], found["retriever"],
                                             question=found["question"]))
        st.session_state[version_key] = version + 1
        st.session_state.pop("neurorit.retrieved", None)
        st.rerun()

# ---- prompt -------------------------------------------------------------------------------------
st.header("Prompt")
with st.expander("Prompt settings (shared by every page)"):
    new_config = forms.prompt_form(state.prompt_config())
    if new_config is not None and new_config != state.prompt_config():
        state.set_prompt_config(new_config)
view = st.radio("View", list(VIEWS), horizontal=True, key=forms.init("w.data.view", "noisy"),
                help="relevant: relevant passages only; irrelevant: distractors only; noisy: a mix; closed_book: no passage.")
if loaded is not None:
    try:
        prompt = build_prompt(example, view, state.prompt_config(), loaded.model.tokenizer)
    except NeuroritError as exc:
        st.error(str(exc))
    else:
        used = prompt.n_tokens + len(prompt.answer_ids)
        c1, c2, c3 = st.columns(3)
        c1.metric("Prompt tokens", prompt.n_tokens)
        c2.metric("Answer tokens", len(prompt.answer_ids))
        c3.metric("Model context", loaded.n_ctx)
        st.progress(min(1.0, used / loaded.n_ctx), text=f"{used} of {loaded.n_ctx} context tokens ({used / loaded.n_ctx:.1%})")
        if used > loaded.n_ctx:
            st.error(f"The prompt does not fit the model's context ({used} > {loaded.n_ctx}): fewer distractors or "
                     "shorter passages (prompt settings).")
        if prompt.truncated:
            st.warning("Some passage was cut to the prompt settings' max tokens per passage.")
        st.caption(f"Exact prompt the model sees ({len(prompt.passages)} passages; the gold answer "
                   f"{example.answers[0]!r} is scored as its continuation):")
        st.code(prompt.text, language=None, wrap_lines=True)
