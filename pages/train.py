"""Train: a placeholder until the training issue lands (stage 1 denoising, stage 2 evidence distillation)."""

from __future__ import annotations

import streamlit as st

st.title("Train")
st.info(
    "Training arrives with the training issue: stage 1 (denoising: instruction tuning on noisy inputs with the "
    "irrelevant-exclusive neurons switched off) and stage 2 (evidence distillation into the targeted layers), "
    "run as background jobs like mining, with the baselines (RALM, full fine-tuning, LoRA, RetRobust) in the same harness."
)
st.caption("Until then: mine the sets (Mine), check what switching them off does (Ablate), and export the mask or a "
           "baked checkpoint (Masks).")
