"""Comparing two mining results (neurorit.compare, `neurorit compare`, the Mine page's panel).

Oracles: a brute-force comparison over Python sets of (layer, index) pairs; the identity
(a result against itself: Jaccard 1, the same scores); subset relations that top-k selection
guarantees (top-10 of each example is inside its top-20, so the k=10 sets lie inside the k=20
sets); the stored mean IG scores, read back with plain indexing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from neurorit.compare import compare_mined, compare_paths, comparison_figure, load_mined
from neurorit.neurons import SET_NAMES
from neurorit.errors import ArtifactError, ModelMismatchError
from neurorit.mining import MinedNeurons
from neurorit.models import ModelIdentity
from neurorit.neurons import NeuronSet
from cli_harness import ok, reason

ROOT = Path(__file__).resolve().parent.parent


def _toy(seed: int, *, n_layers: int = 4, d_mlp: int = 10, ids: tuple[str, ...] = ("q1", "q2", "q3"),
         provenance: dict | None = None) -> MinedNeurons:
    """A mining result made directly: random sets (layer 3 left empty in both views) and mean scores."""
    gen = torch.Generator().manual_seed(seed)
    relevant = torch.rand(n_layers, d_mlp, generator=gen) < 0.35  # [n_layers, d_mlp]
    irrelevant = torch.rand(n_layers, d_mlp, generator=gen) < 0.35
    if n_layers > 3:
        relevant[3], irrelevant[3] = False, False
    return MinedNeurons(
        relevant=NeuronSet(relevant, "relevant"), irrelevant=NeuronSet(irrelevant, "irrelevant"),
        relevant_frequency=relevant.float(), irrelevant_frequency=irrelevant.float(),
        relevant_mean=torch.randn(n_layers, d_mlp, generator=gen),
        irrelevant_mean=torch.randn(n_layers, d_mlp, generator=gen),
        example_ids=ids, model=ModelIdentity("toy", "ToyForCausalLM", n_layers, d_mlp, f"fp{seed}"),
        provenance=provenance if provenance is not None else {"mining_key": "k1", "selection": {"mode": "relative"}},
    )


def _brute(a: MinedNeurons, b: MinedNeurons) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """(set, layer) -> (|A|, |B|, |A & B|, |A | B|) over Python sets of neurons."""
    out = {}
    for name in SET_NAMES:
        sa, sb = set(a.named_sets()[name].neurons()), set(b.named_sets()[name].neurons())
        for layer in range(a.model.n_layers):
            la, lb = {n for n in sa if n[0] == layer}, {n for n in sb if n[0] == layer}
            out[(name, layer)] = (len(la), len(lb), len(la & lb), len(la | lb))
    return out


# ----------------------------------------------------------------------------------------------
# the library


def test_overlap_and_jaccard_match_a_brute_force_set_computation() -> None:
    a, b = _toy(0), _toy(1)
    result = compare_mined(a, b)
    expected = _brute(a, b)
    table = result.table()
    assert len(table) == len(SET_NAMES) * 4
    for row in table.itertuples():
        na, nb, both, either = expected[(row.set, row.layer)]
        assert (row.a, row.b, row.both, row.either) == (na, nb, both, either), row
        if either:
            assert row.jaccard == pytest.approx(both / either, abs=0, rel=1e-12)
        else:
            assert math.isnan(row.jaccard)
    # the toy is not trivial: partial overlaps and an empty layer are there
    assert any(0 < j < 1 for j in table["jaccard"] if not math.isnan(j))
    assert table[table.layer == 3]["jaccard"].isna().all()
    for row in result.totals().itertuples():
        sa, sb = set(a.named_sets()[row.set].neurons()), set(b.named_sets()[row.set].neurons())
        assert (row.a, row.b, row.both, row.either) == (len(sa), len(sb), len(sa & sb), len(sa | sb))
        assert row.jaccard == pytest.approx(len(sa & sb) / len(sa | sb), abs=0, rel=1e-12)
    nonempty = result.table("irrelevant-exclusive", nonempty=True)
    assert set(nonempty.set) == {"irrelevant-exclusive"} and (nonempty.either > 0).all()
    assert len(nonempty) == sum(1 for (n, _), v in expected.items() if n == "irrelevant-exclusive" and v[3])


def test_shifts_are_a_irrelevant_exclusive_neurons_with_their_stored_scores() -> None:
    a, b = _toy(0), _toy(1)
    result = compare_mined(a, b)
    assert [(s.layer, s.index) for s in result.shifts] == a.irrelevant_exclusive.neurons()
    assert result.shifts, "the toy has irrelevant-exclusive neurons"
    for s in result.shifts:
        got = torch.tensor([s.irrelevant_a, s.irrelevant_b, s.relevant_a, s.relevant_b])
        want = torch.stack([a.irrelevant_mean[s.layer, s.index], b.irrelevant_mean[s.layer, s.index],
                            a.relevant_mean[s.layer, s.index], b.relevant_mean[s.layer, s.index]])
        torch.testing.assert_close(got, want)
        assert s.in_b == ((s.layer, s.index) in b.irrelevant_exclusive)
    assert {s.in_b for s in result.shifts} == {True, False}  # both kinds occur in the toy
    summary = result.shift_summary()
    assert summary["n"] == len(result.shifts) and summary["still_in_b"] == sum(s.in_b for s in result.shifts)
    assert summary["irrelevant_b"] == pytest.approx(result.shifts_frame()["irrelevant_b"].mean(), abs=0, rel=1e-12)


def test_a_result_against_itself_has_jaccard_one_and_equal_scores(tmp_path: Path) -> None:
    folder = _toy(0).save(tmp_path / "a")
    result = compare_paths(folder, folder / "mined.json")  # a folder or its mined.json
    assert result.a == result.b == str(folder)
    table = result.table()
    assert (table.a == table.b).all() and (table.both == table.a).all()
    assert (table[table.either > 0].jaccard == 1.0).all()
    assert table[table.either == 0].jaccard.isna().all()
    assert all(s.irrelevant_a == s.irrelevant_b and s.relevant_a == s.relevant_b and s.in_b for s in result.shifts)
    assert result.notes == () and result.same_examples and result.shared_examples == 3


def test_different_shapes_are_refused_with_one_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ModelMismatchError, match=r"4 layers x 10 neurons .* 4 x 12 .* cannot be matched"):
        compare_mined(_toy(0), _toy(1, d_mlp=12))
    with pytest.raises(ModelMismatchError, match=r"4 layers x 10 neurons .* 6 x 10"):
        compare_mined(_toy(0), _toy(1, n_layers=6))
    a, b = _toy(0).save(tmp_path / "a"), _toy(1, d_mlp=12).save(tmp_path / "b")
    line = reason(capsys, "compare", a, b)
    assert "cannot be matched" in line


def test_an_inconsistent_artifact_is_refused(tmp_path: Path) -> None:
    good = _toy(0)
    odd = MinedNeurons(
        relevant=good.relevant, irrelevant=good.irrelevant, relevant_frequency=good.relevant_frequency,
        irrelevant_frequency=good.irrelevant_frequency, relevant_mean=torch.zeros(4, 9),
        irrelevant_mean=good.irrelevant_mean, example_ids=good.example_ids, model=good.model,
    )
    with pytest.raises(ArtifactError, match="inconsistent"):
        compare_mined(good, odd)


def test_different_examples_are_allowed_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _toy(0), _toy(1, ids=("q2", "q3", "q4"))
    result = compare_mined(a, b)
    assert not result.same_examples and result.shared_examples == 2
    (note,) = result.notes
    assert "different examples: 2 shared, 1 only in A, 1 only in B" in note
    data = result.to_json()
    assert data["examples"] == {"a": 3, "b": 3, "shared": 2, "only_a": ["q1"], "only_b": ["q4"]}
    out = ok(capsys, "compare", a.save(tmp_path / "a"), b.save(tmp_path / "b"))
    assert "examples: 3 in A, 3 in B, 2 shared" in out
    assert "warning: A and B were mined on different examples" in out


def test_other_settings_are_reported() -> None:
    other = {"mining_key": "k2", "selection": {"mode": "top_k"}}
    notes = compare_mined(_toy(0), _toy(1, provenance=other)).notes
    assert len(notes) == 2
    assert "different attribution settings (mining key k1 vs k2)" in notes[0]
    assert "different selection rules" in notes[1]


def test_a_path_that_is_not_a_mined_result_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _toy(0).save(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    mask_like = tmp_path / "mask"
    mask_like.mkdir()
    (mask_like / "mask.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("hello")
    truncated = _toy(0).save(tmp_path / "truncated")
    (truncated / "mined.safetensors").write_bytes(b"trunc")
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "empty": "holds no mined.json",
        mask_like: "holds no mined.json",
        tmp_path / "notes.txt": "is a file but not a mined.json",
        truncated: "not a readable safetensors file",
    }
    for path, message in cases.items():
        with pytest.raises(ArtifactError, match=message):
            load_mined(path)
        line = reason(capsys, "compare", good, path)
        assert message in line, line
    assert message in reason(capsys, "compare", truncated, good)  # A is checked as well


def test_json_is_strict_and_complete() -> None:
    result = compare_mined(_toy(0), _toy(1))
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["n_layers"] == 4 and data["d_mlp"] == 10
    assert len(data["layers"]) == len(SET_NAMES) * 4 and [t["set"] for t in data["totals"]] == list(SET_NAMES)
    assert all(row["jaccard"] is None for row in data["layers"] if row["layer"] == 3)
    shifts = data["irrelevant_exclusive_of_a"]
    assert shifts["n"] == len(shifts["neurons"]) == len(result.shifts)
    assert [(n["layer"], n["index"]) for n in shifts["neurons"]] == [(s.layer, s.index) for s in result.shifts]


def test_figure_draws_the_counts_the_jaccard_line_and_the_scatter() -> None:
    result = compare_mined(_toy(0), _toy(1))
    fig = comparison_figure(result, "irrelevant")
    bars = [t for t in fig.data if t.type == "bar"]
    table = result.table("irrelevant")
    assert [list(t.y) for t in bars] == [table.a.tolist(), table.b.tolist(), table.both.tolist()]
    (line,) = [t for t in fig.data if t.name == "Jaccard"]
    assert line.yaxis == "y2"
    assert [None if math.isnan(j) else j for j in table.jaccard] == list(line.y)
    frame = result.shifts_frame()
    scatter = {t.name: t for t in fig.data if t.type == "scatter" and t.mode == "markers"}
    assert list(scatter["irrelevant view"].x) == frame.irrelevant_a.tolist()
    assert list(scatter["relevant view"].y) == frame.relevant_b.tolist()
    (diagonal,) = [t for t in fig.data if t.name.startswith("no change")]
    values = frame[["irrelevant_a", "irrelevant_b", "relevant_a", "relevant_b"]].to_numpy()
    assert list(diagonal.x) == list(diagonal.y) == [values.min(), values.max()]


# ----------------------------------------------------------------------------------------------
# the command line


def test_cli_prints_the_per_layer_table_and_totals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _toy(0), _toy(1)
    fa, fb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    out = ok(capsys, "compare", fa, fb / "mined.json", "--set", "irrelevant")
    lines = out.splitlines()
    assert lines[0].startswith(f"A: {fa} (3 examples on toy, weights fp0)")
    assert lines[1].startswith(f"B: {fb} (3 examples on toy, weights fp1)")
    expected = _brute(a, b)
    start = lines.index("layer      A      B   both  jaccard") + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("total"))
    printed = {int(line.split()[0]): tuple(line.split()[1:]) for line in lines[start:end]}
    nonempty = [layer for layer in range(4) if expected[("irrelevant", layer)][3]]
    assert sorted(printed) == nonempty and 3 not in printed
    for layer, cells in printed.items():
        na, nb, both, either = expected[("irrelevant", layer)]
        assert cells == (str(na), str(nb), str(both), f"{both / either:.3f}")
    sa, sb = set(a.irrelevant.neurons()), set(b.irrelevant.neurons())
    assert lines[end].split() == ["total", str(len(sa)), str(len(sb)), str(len(sa & sb)),
                                  f"{len(sa & sb) / len(sa | sb):.3f}"]
    every = {line.split()[0]: line.split()[1:] for line in lines[lines.index("every set, whole grid:") + 2:]
             if line.split()[0] in SET_NAMES}
    assert list(every) == list(SET_NAMES)
    assert f"A's {len(a.irrelevant_exclusive)} irrelevant-exclusive neurons" in out


def test_cli_json_and_html(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fa, fb = _toy(0).save(tmp_path / "a"), _toy(1).save(tmp_path / "b")
    html = tmp_path / "figs" / "compare.html"
    out = ok(capsys, "compare", fa, fb, "--json", "--html", html)
    assert json.loads(out) == json.loads(json.dumps(compare_paths(fa, fb).to_json()))
    text = html.read_text()
    assert "<html" in text and "plotly" in text and "Jaccard" in text
    out = ok(capsys, "compare", fa, fb, "--html", html)
    assert out.splitlines()[-1] == f"figure: {html}"
    assert "is a folder" in reason(capsys, "compare", fa, fb, "--html", tmp_path)
    assert "unknown set 'nope'; choose one of relevant" in reason(capsys, "compare", fa, fb, "--set", "nope")


# ----------------------------------------------------------------------------------------------
# real mining on the tiny Llama


@pytest.fixture(scope="module")
def mined_pair(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 3 demo examples mined twice on the tiny Llama (n_steps 2): top-10 and top-20 per example."""
    from neurorit.attribution import AttributionConfig
    from neurorit.data import demo_examples
    from neurorit.mining import mine, mined_dir
    from neurorit.neurons import SelectionRule
    from neurorit.prompts import PromptConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURORIT_CACHE", str(tmp_path_factory.mktemp("compare-cache")))
        folders = []
        for k in (10, 20):  # the second reuses the cached scores
            mined = mine(tiny_llama, demo_examples()[:3], AttributionConfig(n_steps=2),
                         SelectionRule(mode="top_k", top_k=k), PromptConfig(n_distractors=1))
            folders.append(mined_dir(mined))
    return folders[0], folders[1]


def test_two_selection_rules_on_the_same_scores(mined_pair: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    fa, fb = mined_pair
    a, b = load_mined(fa), load_mined(fb)
    result = compare_paths(fa, fb)
    expected = _brute(a, b)
    for row in result.table().itertuples():
        assert (row.a, row.b, row.both, row.either) == expected[(row.set, row.layer)]
    totals = result.totals().set_index("set")
    for view in ("relevant", "irrelevant"):  # each example's top 10 lies inside its top 20
        assert totals.loc[view, "both"] == totals.loc[view, "a"] > 0
        assert totals.loc[view, "b"] > totals.loc[view, "a"]
    assert all(s.irrelevant_a == s.irrelevant_b and s.relevant_a == s.relevant_b for s in result.shifts)
    assert result.same_examples
    (note,) = result.notes
    assert "different selection rules" in note
    out = ok(capsys, "compare", fa, fb)
    assert "warning: A and B used different selection rules" in out and "every set, whole grid:" in out


# ----------------------------------------------------------------------------------------------
# the Mine page's panel


def test_mine_page_compares_two_cached_results(app_env: Path, mined_pair: tuple[Path, Path]) -> None:
    from streamlit.testing.v1 import AppTest

    for folder in mined_pair:
        shutil.copytree(folder, app_env / "mined" / folder.name)
    at = AppTest.from_file(str(ROOT / "pages" / "mine.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Compare two mined sets" in [e.proto.label for e in at.expander]
    assert any("different selection rules" in w.value for w in at.warning)
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # set sizes, overlap, stability, and the comparison
    assert "Jaccard" in charts[-1].proto.spec
    a, b = at.selectbox(key="w.mine.compare.a").value, at.selectbox(key="w.mine.compare.b").value
    result = compare_paths(a, b)
    shown = at.dataframe
    per_layer = next(d.value for d in shown if list(d.value.columns) == ["layer", "a", "b", "both", "either", "jaccard"])
    expected = result.table("irrelevant-exclusive", nonempty=True)
    assert per_layer["both"].tolist() == expected["both"].tolist()
    assert per_layer["layer"].tolist() == expected["layer"].tolist()
    references = next(d.value for d in shown if list(d.value.columns) == ["what", "n", "a", "b", "ratio"])
    assert references["ratio"].tolist() == pytest.approx([r["ratio"] for r in result.references], nan_ok=True)

    at.selectbox(key="w.mine.compare.set").set_value("relevant").run()
    assert not at.exception
    per_layer = next(d.value for d in at.dataframe if list(d.value.columns) == ["layer", "a", "b", "both", "either", "jaccard"])
    assert per_layer["a"].tolist() == result.table("relevant", nonempty=True)["a"].tolist()

    shutil.rmtree(app_env / "mined" / mined_pair[1].name)  # one result left: the panel says what it needs
    at = AppTest.from_file(str(ROOT / "pages" / "mine.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Comparing needs two mining results" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 3


def test_reference_shifts_read_a_shift_against_random_sets_top_neurons_and_scale() -> None:
    import dataclasses as dc

    from neurorit.compare import reference_shifts

    a = _toy(0)
    chosen = a.irrelevant_exclusive.grid
    same = {r["what"]: r for r in reference_shifts(a, a, chosen, draws=50)}
    assert all(abs(r["ratio"] - 1) < 1e-6 for r in same.values())  # B = A: nothing moved
    doubled = dc.replace(a, irrelevant_mean=2 * a.irrelevant_mean)
    rows = {r["what"]: r for r in reference_shifts(a, doubled, chosen, draws=50)}
    assert all(abs(r["ratio"] - 2) < 1e-6 for r in rows.values())  # a uniform rescale shows in every row
    flat = a.irrelevant_mean.flatten()
    top = sorted(flat.tolist(), reverse=True)[:10]
    row = rows["A's top 10 by irrelevant-view score"] if "A's top 10 by irrelevant-view score" in rows else None
    assert row is None  # 40 neurons: the default top 100 is capped at the grid
    capped = rows["A's top 40 by irrelevant-view score"]
    assert abs(capped["a"] - flat.mean().item()) < 1e-6 * flat.abs().max().item()
    small = {r["what"]: r for r in reference_shifts(a, a, chosen, draws=50, top=10)}
    assert abs(small["A's top 10 by irrelevant-view score"]["a"] - sum(top) / 10) < 1e-6 * max(map(abs, top))
    # the random sets keep the set's per-layer counts: their expected mean is the count-weighted layer means
    counts = chosen.sum(dim=1).float()
    expected = float((counts * a.irrelevant_mean.mean(dim=1)).sum() / counts.sum())
    drawn = reference_shifts(a, a, chosen, draws=2000)[1]
    spread = float(a.irrelevant_mean.std())
    assert drawn["what"].startswith("random, same per-layer counts") and drawn["n"] == int(chosen.sum())
    assert abs(drawn["a"] - expected) < 0.1 * spread
