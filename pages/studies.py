"""Studies: write or load a study (a grid of datasets x noise x methods x seeds), run it as a
background job, follow its cells, and read the comparison table and the accuracy figure.

The page checks the YAML through neurorit.study.StudySpec (app.studies.parse_spec), queues
`neurorit study` (app.studies.submit), and reads what the job writes under cache/studies/<study>/
(cells, results.csv, summary.csv, report.md). No model logic here.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state, studies
from app.progress import cancel_button
from neurorit.errors import NeuroritError
from neurorit.study import accuracy_figure, study_status

POLL_S = 3.0
TEXT_KEY = "w.studies.yaml"
FOLDER_KEY = "neurorit.studies.folder"

st.title("Studies")
st.caption("Compare Neuro-RIT with RALM, its random-mask control and the fine-tuning baselines over datasets, noise "
           "kinds, numbers of distractors and seeds, with 95 % bootstrap intervals over questions and paired tests on "
           "the same questions. A study runs as a background job; finished cells are kept when it stops.")

# ---- write or load a study ----------------------------------------------------------------------
st.subheader("Study file")
examples = studies.example_files()
if examples:
    left, right = st.columns([3, 1])
    choice = left.selectbox("Start from an example", list(examples), key="w.studies.example")
    if right.button("Load", key="studies.load") or TEXT_KEY not in st.session_state:
        st.session_state[TEXT_KEY] = examples[choice].read_text()
text = st.text_area("Study (YAML)", key=TEXT_KEY, height=320,
                    help="Fields of neurorit.study.StudySpec; relative dataset paths are read from the project folder.")
spec = None
try:
    spec = studies.parse_spec(text or "")
except NeuroritError as exc:
    st.error(str(exc))
if spec is not None:
    cells = spec.cells()
    st.caption(f"**{spec.name}**: {len(cells)} cells ({len(spec.datasets)} dataset(s) x {len(spec.noise)} noise kind(s) "
               f"x {len(spec.seeds)} seed(s) x methods {', '.join(spec.methods)}); each cell is evaluated with "
               f"{', '.join(map(str, sorted(spec.n_distractors)))} distractors.")
    if st.button("Start the study", type="primary", key="studies.start"):
        try:
            job, folder = studies.submit(spec)
            st.session_state[FOLDER_KEY] = str(folder)
            st.toast(f"Job {job.id} runs {folder.name}")
        except (NeuroritError, OSError) as exc:
            st.error(f"Could not start the study: {exc}")

# ---- study folders ------------------------------------------------------------------------------
st.subheader("Studies run")
folders = {str(f.folder): f for f in studies.list_folders()}
if not folders:
    st.info("No study yet: start one above (or run `neurorit study studies/smoke.yaml`).")
    state.stop_run()
if st.session_state.get(FOLDER_KEY) not in folders:
    st.session_state[FOLDER_KEY] = next(iter(folders))
key = st.selectbox("Study", list(folders), key=FOLDER_KEY, format_func=lambda k: folders[k].label)
chosen = folders[key]
if chosen.spec is None:
    st.error(chosen.error)
    state.stop_run()
try:
    first_job = studies.job_of(chosen.folder)
except (NeuroritError, OSError) as exc:
    st.error(f"Cannot read the job table: {exc}")
    first_job = None
active = first_job is not None and first_job.state in ("queued", "running")


@st.fragment(run_every=POLL_S if active else None)
def progress_panel() -> None:
    folder = Path(key)
    job = None
    try:
        job = studies.job_of(folder)
    except (NeuroritError, OSError) as exc:
        st.error(f"Cannot read the job table: {exc}")
    status = study_status(chosen.spec, folder)
    n_done = int((status["state"] == "done").sum())
    text = f"{n_done} of {len(status)} cells done"
    if job is not None:
        text += f" · job {job.id} {job.state}" + (f" · {job.message}" if job.message and job.state == "running" else "")
    st.progress(n_done / len(status) if len(status) else 0.0, text=text)
    if job is not None and job.state in ("queued", "running"):
        cancel_button(job.id, label="Cancel", key=f"studies.cancel.{job.id}")
    elif job is not None and job.state == "failed":
        st.error(f"The study job failed: {job.error}")
    for _, row in status[status["state"] == "failed"].iterrows():
        st.error(f"Cell {row['cell_id']} failed: {row['error']}")
    if n_done < len(status) and (job is None or job.state not in ("queued", "running")):
        if st.button("Resume the study", key=f"studies.resume.{folder.name}"):
            try:
                resumed, _ = studies.submit(chosen.spec)
                st.toast(f"Job {resumed.id} resumes {folder.name}")
            except (NeuroritError, OSError) as exc:
                st.error(f"Could not resume: {exc}")
            st.rerun()
    shown = status.assign(dataset=status["dataset"].map(lambda d: Path(str(d)).name))
    with st.expander("Cells", expanded=n_done < len(status)):
        st.dataframe(shown, hide_index=True)
    if job is not None:
        with st.expander("Log", expanded=job.state == "failed"):
            st.code(job.log_tail(30) or "(empty)", language=None)
    if active and (job is None or job.state not in ("queued", "running")):
        st.rerun()  # it just stopped: redraw the tables


progress_panel()

# ---- results ------------------------------------------------------------------------------------
summary = studies.summary(chosen.folder)
table = studies.results(chosen.folder)
if summary.empty:
    st.info("No results yet: the table and the figure appear when the study job finishes (or is resumed and ends).")
    state.stop_run()
st.subheader("Accuracy vs number of distractors")
st.plotly_chart(accuracy_figure(summary), key="studies.figure")
seeds_pooled = studies.pooled(chosen.folder)
if not seeds_pooled.empty:
    st.subheader("Seeds pooled, paired")
    st.caption("Each method minus RALM or its random-mask control on the same questions: per question, correctness "
               "averaged over the seeds both have, then a 95 % paired bootstrap interval over questions (`low`, "
               "`high`); the McNemar p only where there is one seed.")
    st.dataframe(seeds_pooled, hide_index=True)
st.subheader("Comparisons on the same questions")
st.caption("`vs_ralm_*` and `vs_random_mask_*`: mean accuracy difference with its 95 % paired bootstrap interval and the "
           "exact McNemar p, on the same questions (same dataset, noise, seed and number of distractors).")
st.dataframe(studies.comparison_frame(table), hide_index=True)
with st.expander("Every column"):
    st.dataframe(table, hide_index=True)
report = chosen.folder / "report.md"
if report.is_file():
    st.download_button("Download the report (Markdown)", report.read_text(), file_name=f"{chosen.folder.name}.md",
                       key="studies.report")
st.caption(f"Study folder: `{chosen.folder}`")
