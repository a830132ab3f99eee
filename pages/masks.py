"""Masks: list the cached masks with provenance, download / upload them, bake one into a checkpoint, compare two."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import artifacts, card_view, forms, resources, state, views
from neurorit import store
from neurorit.errors import NeuroritError
from neurorit.masks import NeuronMask, bake

st.title("Masks")
st.caption("Step 5: a mask is a scale per neuron (mask.safetensors) plus the model and provenance it belongs to (mask.json).")

loaded = resources.current_model()
fingerprint = loaded.identity.fingerprint if loaded else None

# ---- upload (first: an import shows up in the list below at once) ------------------------------
st.subheader("Upload a mask")
uploads = st.file_uploader("A .zip from this page, or mask.safetensors + mask.json", type=["zip", "safetensors", "json"],
                           accept_multiple_files=True, key="upload.mask")
allow_other = st.checkbox("Accept a model with the same shape but other weights (e.g. a fine-tuned copy)",
                          key=forms.init("w.masks.non_strict", False))
if st.button("Validate and import", disabled=not uploads):
    if loaded is None:
        st.error("Load a model first (Model & data page): a mask is validated against the loaded model.")
    else:
        try:
            mask, folder = artifacts.import_mask([(f.name, f.getvalue()) for f in uploads], loaded.model,
                                                 strict=not allow_other)
            n_layers = sum(1 for c in mask.counts_per_layer() if c)
            st.success(f"Mask {mask.key()} imported and valid for {loaded.identity.name}: {len(mask)} neurons in "
                       f"{n_layers} layer(s), saved to {folder}")
        except NeuroritError as exc:
            st.error(f"Upload refused: {exc}")

# ---- list -------------------------------------------------------------------------------------
st.subheader("Masks in the cache")
entries = artifacts.list_masks()
if not entries:
    st.info("No mask yet: save one from the Explore or Ablate page, or upload one above.")
    state.stop_run()
st.dataframe(views.masks_frame(entries, fingerprint=fingerprint), hide_index=True,
             column_config={"fits_loaded_model": st.column_config.CheckboxColumn("fits loaded model")})
pick = st.selectbox("Mask", range(len(entries)), format_func=lambda i: artifacts.mask_label(entries[i]), key="masks.pick")
entry = entries[int(pick or 0)]
if entry.error:
    st.error(entry.error)
    state.stop_run()
c1, c2 = st.columns([1, 1])
with c1:
    st.markdown("**Provenance**")
    st.json(entry.meta.get("provenance") or {}, expanded=1)
    st.caption(f"Model: {(entry.meta.get('model') or {}).get('name', '?')} · weights "
               f"`{(entry.meta.get('model') or {}).get('fingerprint', '?')}` · folder `{entry.folder}`")
with c2:
    counts = entry.meta.get("counts_per_layer") or []
    try:  # a bar opens its layer's neuron whose scale is furthest from 1 (the first of equals); a row, its neuron
        picked_mask = NeuronMask.load(entry.folder)
        members = picked_mask.neurons
        neuron_notes, notes_problem = card_view.table_notes(picked_mask.model.fingerprint)
        bar = card_view.selected_neuron(st.plotly_chart(card_view.clickable_bars(
            views.set_counts_figure({"neurons": counts}, title="Neurons with scale ≠ 1 per layer"),
            [card_view.strongest_per_layer(members, (picked_mask.scale - 1).abs())], what="first"),
            key="masks.counts", on_select="rerun", selection_mode="points"))
        listed = members.neurons()[:500]
        table = card_view.neurons_frame(listed, neuron_notes, extra={"scale": [float(picked_mask.scale[n]) for n in listed]})
        row = card_view.selected_row_neuron(st.dataframe(table, hide_index=True, key="masks.neurons", height=200,
                                                         on_select="rerun", selection_mode="single-row"), table)
        st.caption(f"{len(members)} neurons (at most 500 listed); note: your label. Click a bar or a row to open a "
                   "neuron's card." + (f" {notes_problem}" if notes_problem else ""))
        if (bar or row) is not None:
            st.switch_page(card_view.CARD_PAGE, query_params=card_view.card_query(bar or row))
    except NeuroritError as exc:
        st.error(str(exc))
try:
    st.download_button("Download mask (.zip)", data=artifacts.mask_zip_bytes(entry.folder),
                       file_name=f"neurorit-mask-{entry.key[:12]}.zip", mime="application/zip", type="primary", on_click="ignore")
except NeuroritError as exc:
    st.error(str(exc))

# ---- bake ---------------------------------------------------------------------------------------
st.subheader("Export a baked checkpoint")
st.caption("Multiplies the scale into each layer's output projection and writes an ordinary Hugging Face folder "
           "that any inference engine serves (exactly the masked model).")
out = st.text_input("Output folder", value=str(store.cache_root() / "export" / entry.key[:16]), key=f"masks.out.{entry.key}")
overwrite = st.checkbox("Replace an earlier export in that folder", key="masks.overwrite")
if st.button("Export the baked checkpoint"):
    if loaded is None:
        st.error("Load the model the mask was made for first (Model & data page).")
    else:
        try:
            with st.spinner("Baking…"), loaded.lock:
                mask = NeuronMask.load(entry.folder, loaded.model, strict=not allow_other)
                folder = bake(mask, loaded.model, Path(out).expanduser(), strict=not allow_other, overwrite=overwrite,
                              notes=artifacts.mask_notes(entry.folder))  # the neurons' notes travel along
            st.success(f"Baked {len(mask)} neurons into {folder}")
        except NeuroritError as exc:
            st.error(str(exc))

# ---- compare ------------------------------------------------------------------------------------
st.subheader("Compare two masks")
if len(entries) < 2:
    st.info("Save or upload a second mask to compare.")
    state.stop_run()
c1, c2 = st.columns(2)
ia = c1.selectbox("Mask A", range(len(entries)), format_func=lambda i: artifacts.mask_label(entries[i]), key="masks.a")
ib = c2.selectbox("Mask B", range(len(entries)), index=1, format_func=lambda i: artifacts.mask_label(entries[i]), key="masks.b")
try:
    a, b = NeuronMask.load(entries[int(ia)].folder), NeuronMask.load(entries[int(ib)].folder)
    names = (f"A {entries[int(ia)].key[:8]}", f"B {entries[int(ib)].key[:8]}")
    st.dataframe(views.overlap_summary(a.neurons, b.neurons, names=names), hide_index=True)
    st.plotly_chart(views.overlap_figure(a.neurons, b.neurons, names=names, title="Per-layer overlap"), key="masks.overlap")
except NeuroritError as exc:
    st.error(str(exc))
