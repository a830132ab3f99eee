"""`neurorit retrieve`: ranked passages for a question, and a noisy data file that --data reads back."""

from __future__ import annotations

import json

from neurorit.cli import main
from neurorit.data import load_examples


def test_retrieve_a_question_and_write_noise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "contents": "Paris\nParis is the capital of France."},
        {"id": "b", "contents": "Lyon\nLyon is a large city in France."},
        {"id": "c", "contents": "Berlin\nBerlin is the capital of Germany."},
        {"id": "d", "contents": "Nile\nThe Nile is a river."},
    ]))
    assert main(["retrieve", "--corpus", str(corpus), "--question", "capital of France", "--k", "2",
                 "--answers", "Paris", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bm25 over corpus.jsonl (4 passages), top 2")
    assert "relevant   a  Paris" in out[1] and "irrelevant c  Berlin" in out[2]

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "What is the capital of France?", "answers": ["Paris"],
                                "passages": [{"title": "Paris", "text": "Paris is the capital of France.",
                                              "relevant": True}]}) + "\n")
    noisy = tmp_path / "noisy.jsonl"
    assert main(["retrieve", "--data", str(data), "--corpus", str(corpus), "--noise", "hard", "--n-distractors", "2",
                 "--position", "last", "--seed", "3", "--out", str(noisy), "--quiet"]) == 0
    (example,) = load_examples(noisy)
    assert [p.title for p in example.passages] == ["Berlin", "Lyon", "Paris"]  # the shorter one first
    assert example.provenance["noise"] == "hard" and example.provenance["seed"] == 3

    assert main(["retrieve", "--data", str(data), "--question", "x"]) == 2
    assert main(["retrieve", "--corpus", str(tmp_path / "missing.jsonl"), "--question", "x"]) == 2
    assert "neither a file nor one of" in capsys.readouterr().err
