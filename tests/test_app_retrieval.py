"""The retrieval part of the Model & data page (AppTest) and its pure view."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from streamlit.testing.v1 import AppTest

from app import state
from app.retrieval import hits_frame
from neurorit.retrieval import Corpus


def test_hits_frame_flags_by_answer():
    corpus = Corpus(name="c", ids=("a", "b"), titles=("Paris", "Lyon"), texts=("Capital of France.", "A city."))
    frame = hits_frame(corpus, [(1, 2.0), (0, 1.5)], ["Paris"])
    assert frame["id"].tolist() == ["b", "a"] and frame["relevant"].tolist() == [False, True]
    assert frame["rank"].tolist() == [1, 2]


def test_model_data_page_retrieves_and_uses_the_passages(app_env: Path) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "model_data.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    at.multiselect(key="w.retrieve.corpus").set_value(["The demo set's passages"])
    at.number_input(key="w.retrieve.k").set_value(3)
    next(b for b in at.button if b.label == "Retrieve").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    frame = at.dataframe[-1].value
    assert len(frame) == 3 and frame["relevant"].iloc[0]  # the demo's Pride and Prejudice passage ranks first
    next(b for b in at.button if b.label.startswith("Use these passages")).click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    example = state.current_example(at.session_state)
    assert len(example.passages) == 3 and example.provenance["noise"] == "retrieved"
    assert [p.title for p in example.passages] == frame["title"].tolist()
