"""neurorit.study on the tiny Llama: a 2-method x 2-seed study end to end, a study interrupted
mid-grid that resumes to the same table, the spec's validation (one clear message per bad file,
through the CLI too), the grid's stable ids, and the counting selection recipe on a hand case."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from neurorit import study
from neurorit.errors import ConfigError, DataError
from neurorit.neurons import SelectionRule, select_neurons
from neurorit.study import TIMING_COLUMNS, StudySpec, read_results, run_study, study_status
from cli_harness import ok, reason


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny_spec(model_dir: Path, **overrides: object) -> StudySpec:
    fields: dict[str, object] = {
        "name": "tiny", "model": str(model_dir), "device": "cpu", "threads": 1, "datasets": ["demo"], "limit": 24,
        "noise": ["random"], "n_distractors": [0, 2], "mining_sizes": [3], "methods": ["ralm", "neuro_rit"],
        "seeds": [0, 1], "n_test": 4, "test_fraction": 0.3, "train_distractors": [1, 2],
        "mining": {"n_steps": 2, "layers": [0, 1]}, "prompt": {"max_passage_tokens": 48, "n_distractors": 2},
        "max_new_tokens": 3, "n_resamples": 200,
        "train": {"max_steps": 2, "batch_size": 1, "grad_accum": 1, "checkpoint_every": 1, "dev_every": 0,
                  "max_prompt_tokens": 1024},
    }
    fields.update(overrides)
    return StudySpec.from_dict(fields)


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in TIMING_COLUMNS if c in table.columns]).reset_index(drop=True)


# ---- end to end and resume -----------------------------------------------------------------------


def test_tiny_study_runs_end_to_end(tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = _tiny_spec(tiny_llama_dir)
    seen: list[tuple[int, int, str]] = []
    result = run_study(spec, tmp_path / "study", on_progress=lambda d, t, m: seen.append((d, t, m)))
    table = result.table
    assert result.n_cells == result.n_done == 4
    assert len(table) == 4 * 2  # 4 cells x 2 numbers of distractors
    assert set(table["method"]) == {"ralm", "neuro_rit"} and set(table["seed"]) == {0, 1}
    assert set(table["n_distractors"]) == {0, 2}
    assert (table["n"] >= 1).all()
    for metric in ("accuracy", "em", "f1"):
        assert ((table[f"{metric}_low"] <= table[metric] + 1e-12) & (table[metric] <= table[f"{metric}_high"] + 1e-12)).all()
    rit = table[table["method"] == "neuro_rit"]
    assert rit["vs_ralm_n"].eq(rit["n"]).all()  # paired on the same questions
    assert rit["vs_ralm_p"].between(0, 1).all()
    assert table.loc[table["method"] == "ralm", "vs_ralm_diff"].isna().all()
    assert (rit["n_mined"] > 0).all()
    folder = tmp_path / "study"
    for name in ("study.yaml", "results.csv", "results.jsonl", "summary.csv", "report.md",
                 "accuracy_vs_distractors.html"):
        assert (folder / name).is_file(), name
    lines = (folder / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(table) and json.loads(lines[0])["cell_id"] == table["cell_id"].iloc[0]
    assert "McNemar" in (folder / "report.md").read_text()
    _check_pooled(spec, folder, table)
    assert seen[-1][0] == seen[-1][1] == 4
    assert not any((folder / "cells").glob("*/run/checkpoints"))  # removed once a cell is done
    assert (study_status(spec, folder)["state"] == "done").all()
    # a rerun of a finished folder without --resume is refused; with it, nothing runs again
    with pytest.raises(Exception, match="--resume"):
        run_study(spec, folder)
    again = run_study(spec, folder, resume=True, on_progress=lambda d, t, m: seen.append((d, t, m)))
    pd.testing.assert_frame_equal(_comparable(again.table), _comparable(table))
    assert all("done before" in m for _, _, m in seen[-4:])


def _check_pooled(spec: StudySpec, folder: Path, table: pd.DataFrame) -> None:
    """pooled.csv against a direct computation from the cells' per-question files."""
    pooled = pd.read_csv(folder / "pooled.csv")
    cells = {(r.method, r.seed): r.cell_id for r in table.itertuples()}
    for row in pooled.itertuples():
        assert row.method == "neuro_rit" and row.reference == "ralm" and row.n_seeds == 2
        per_seed = []
        for seed in (0, 1):
            a, b = (pd.read_json(folder / "cells" / cells[(m, seed)] / "results.jsonl", lines=True)
                    for m in ("neuro_rit", "ralm"))
            a, b = (f[f["n_distractors"] == row.n_distractors].set_index("example_id")["correct"] for f in (a, b))
            per_seed.append(a.astype(float) - b.astype(float))
        by_question = pd.concat(per_seed, axis=1).mean(axis=1)  # the seeds of a question averaged first
        assert row.n_questions == len(by_question)
        assert abs(row.diff - by_question.mean()) < 1e-12
        assert row.low <= row.diff + 1e-12 and row.diff <= row.high + 1e-12
        assert pd.isna(row.p_mcnemar)  # not binary once seeds are averaged
    assert len(pooled) == 2  # neuro_rit vs ralm at 0 and 2 distractors (no random-mask control in the grid)
    assert "## Seeds pooled, paired" in (folder / "report.md").read_text()


class _Stop(Exception):
    pass


def test_interrupted_study_resumes_to_the_same_table(tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = _tiny_spec(tiny_llama_dir)
    whole = run_study(spec, tmp_path / "whole")

    def stop_in_training(done: int, total: int, message: str) -> None:
        if done >= 1 and "loss" in message:  # the first trained cell (neuro_rit, seed 0), after its first step
            raise _Stop(message)

    with pytest.raises(_Stop):
        run_study(spec, tmp_path / "cut", on_progress=stop_in_training)
    cut = tmp_path / "cut"
    assert (study_status(spec, cut)["state"] == "done").sum() == 2  # the untrained cells run first (ralm, 2 seeds)
    assert any((cut / "cells").glob("neuro_rit-*/run/config.json"))  # a training run cut short
    resumed = run_study(spec, cut, resume=True)
    pd.testing.assert_frame_equal(_comparable(resumed.table), _comparable(whole.table))
    pd.testing.assert_frame_equal(_comparable(read_results(cut)), _comparable(read_results(tmp_path / "whole")))


def test_a_cell_that_fails_is_recorded_and_the_grid_goes_on(tiny_llama_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _tiny_spec(tiny_llama_dir)
    real = study.run_cell

    def failing_neuro_rit(spec_, study_dir, cell, *args, **kwargs):  # type: ignore[no-untyped-def]
        if cell.method == "neuro_rit" and cell.seed == 0:
            raise DataError("example x: the irrelevant prompt is too long")
        return real(spec_, study_dir, cell, *args, **kwargs)

    monkeypatch.setattr(study, "run_cell", failing_neuro_rit)
    result = run_study(spec, tmp_path / "s")
    status = study_status(spec, tmp_path / "s")
    failed = status[status["state"] == "failed"]
    assert list(failed["method"]) == ["neuro_rit"] and list(failed["seed"]) == [0]
    assert (status["state"] == "done").sum() == len(status) - 1  # every other cell ran after the failure
    assert list(result.failed.values()) == ["example x: the irrelevant prompt is too long"]
    assert "## Failed cells" in (tmp_path / "s" / "report.md").read_text()
    monkeypatch.setattr(study, "run_cell", real)  # the cause fixed: --resume runs the failed cell alone
    resumed = run_study(spec, tmp_path / "s", resume=True)
    assert resumed.failed == {} and resumed.n_done == resumed.n_cells
    assert (study_status(spec, tmp_path / "s")["state"] == "done").all()


def test_stage_variants_and_random_control_run(tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = _tiny_spec(tiny_llama_dir, methods=["ralm", "neuro_rit_stage1", "neuro_rit_stage2", "random_mask"],
                      seeds=[0], n_distractors=[2], recipes=["relative", "count"],
                      selection_recipes={"count": {"mode": "count", "per_example": 5, "keep": 4}})
    table = run_study(spec, tmp_path / "variants").table
    assert len(table) == 1 + 3 * 2  # ralm, then 3 mined methods x 2 recipes
    stage1 = table[table["method"] == "neuro_rit_stage1"]
    assert stage1["vs_random_mask_n"].eq(stage1["n"]).all()  # compared with the control of the same sets
    runs = sorted((tmp_path / "variants" / "cells").glob("neuro_rit_stage2-*/run/run.json"))
    assert runs and all(json.loads(r.read_text())["plan"]["mask"]["n_neurons"] == 0 for r in runs)  # no mask
    assert not any((tmp_path / "variants" / "cells").glob("neuro_rit_stage1-*/run"))  # no training


def test_mask_only_method_is_compared_with_the_mask_only_control(tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = _tiny_spec(tiny_llama_dir, methods=["ralm", "neuro_rit_stage1", "random_mask_stage1", "random_mask"],
                      seeds=[0, 1], n_distractors=[2])
    study = tmp_path / "mask-only"
    table = run_study(spec, study).table
    assert not any((study / "cells").glob("random_mask_stage1-*/run"))  # evaluated with the mask, never trained
    stage1 = table[(table["method"] == "neuro_rit_stage1") & (table["seed"] == 1)].iloc[0]
    control = table[(table["method"] == "random_mask_stage1") & (table["seed"] == 1)].iloc[0]
    assert stage1["vs_random_mask_n"] == stage1["n"] == control["n"]
    # the paired difference is against the mask-only control of the same seed, not the trained one
    assert stage1["vs_random_mask_diff"] == pytest.approx(stage1["accuracy"] - control["accuracy"])
    assert table[table["method"].str.startswith("random_mask")]["vs_random_mask_n"].eq(0).all()


# ---- the spec ------------------------------------------------------------------------------------


def test_spec_round_trips_through_yaml_and_ids_are_stable(tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = _tiny_spec(tiny_llama_dir)
    path = tmp_path / "s.yaml"
    path.write_text(spec.to_yaml())
    again = StudySpec.from_yaml(path)
    assert again == spec and again.hash() == spec.hash()
    assert [spec.cell_id(c) for c in spec.cells()] == [again.cell_id(c) for c in again.cells()]
    ids = [spec.cell_id(c) for c in spec.cells()]
    assert len(set(ids)) == len(ids) == 4
    other = _tiny_spec(tiny_llama_dir, seeds=[0, 1, 2])
    assert set(ids) < {other.cell_id(c) for c in other.cells()}  # adding a seed keeps the other cells' ids
    assert [c.method for c in other.cells()] == ["ralm"] * 3 + ["neuro_rit"] * 3  # untrained cells first
    changed = _tiny_spec(tiny_llama_dir, train={"max_steps": 3, "dev_every": 0})
    assert not set(ids) & {changed.cell_id(c) for c in changed.cells()}


def test_methods_without_mined_sets_are_one_cell_each() -> None:
    spec = StudySpec(methods=("ralm", "lora", "neuro_rit"), mining_sizes=(4, 8), recipes=("relative", "count"))
    kinds = [(c.method, c.mining_size, c.recipe) for c in spec.cells()]
    assert kinds == [("ralm", None, None), ("lora", None, None), ("neuro_rit", 4, "relative"),
                     ("neuro_rit", 4, "count"), ("neuro_rit", 8, "relative"), ("neuro_rit", 8, "count")]


def test_seeds_by_method_gives_a_method_its_own_seeds() -> None:
    spec = StudySpec(methods=("ralm", "neuro_rit", "lora"), seeds=(0, 1, 2), seeds_by_method={"lora": [0]})
    assert [(c.method, c.seed) for c in spec.cells()] == [
        ("ralm", 0), ("ralm", 1), ("ralm", 2), ("neuro_rit", 0), ("lora", 0), ("neuro_rit", 1), ("neuro_rit", 2)]
    with pytest.raises(ConfigError, match="seeds_by_method"):
        StudySpec(methods=("ralm",), seeds_by_method={"lora": [0]})


def test_noise_kinds_replace_the_irrelevant_passages_and_plug_in() -> None:
    from neurorit.data import demo_examples
    from neurorit.study import NOISE_KINDS, apply_noise, register_noise

    examples = demo_examples()[:12]
    for kind in ("random", "hard"):
        noisy = apply_noise(examples, kind, 3, seed=1)
        for before, after in zip(examples, noisy):
            assert after.relevant_passages == before.relevant_passages
            assert len(after.irrelevant_passages) == 3
            assert not set(after.irrelevant_passages) & set(before.irrelevant_passages)  # other questions' passages
            assert after.provenance["noise"] == kind
    assert apply_noise(examples, "given", 3, seed=1) == examples
    retrieved = apply_noise(examples[:4], "retrieved_hard", 2, seed=1)  # BM25 over these passages + Wikipedia
    for before, after in zip(examples, retrieved):
        assert after.relevant_passages == before.relevant_passages and len(after.irrelevant_passages) == 2
        assert after.provenance["noise"] == "hard" and after.provenance["passages"]  # how each was chosen
        assert not any(a.lower() in p.text.lower() for p in after.irrelevant_passages for a in before.answers)
    register_noise("none", lambda exs, n, seed: [e.with_passages(e.relevant_passages) for e in exs])
    try:
        assert StudySpec(noise=("none",)).noise == ("none",)
        assert all(not e.irrelevant_passages for e in apply_noise(examples, "none", 3, seed=0))
    finally:
        NOISE_KINDS.pop("none")


def test_counterfactual_noise_reads_the_rgb_file_of_the_dataset(tmp_path: Path) -> None:
    from neurorit.data import load_examples
    from neurorit.study import apply_noise, noise_kinds

    record = {"id": 7, "query": "Who won the 2022 prize?", "answer": ["Alice"], "positive": ["Alice won the 2022 prize."],
              "negative": ["The prize is old."], "positive_wrong": ["Bob won the 2022 prize.", "Carol won it in 2022."]}
    rgb = tmp_path / "rgb_en_fact.jsonl"
    rgb.write_text(json.dumps(record) + "\n")
    examples = load_examples(rgb)
    (noisy,) = apply_noise(examples, "counterfactual", 2, seed=0, dataset=str(rgb))
    assert [p.text for p in noisy.irrelevant_passages] == ["Bob won the 2022 prize.", "Carol won it in 2022."]
    assert noisy.relevant_passages == examples[0].relevant_passages
    assert {"counterfactual", "retrieved_dense_hard", "retrieved_splade_hard", "retrieved_hybrid_hard"} <= set(noise_kinds())
    assert StudySpec(noise=("counterfactual", "retrieved_dense_hard")).noise == ("counterfactual", "retrieved_dense_hard")
    with pytest.raises(ConfigError, match="dataset"):
        apply_noise(examples, "counterfactual", 2, seed=0)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({**record, "positive_wrong": []}) + "\n")
    with pytest.raises(DataError, match="positive_wrong"):
        apply_noise(load_examples(plain), "counterfactual", 2, seed=0, dataset=str(plain))


@pytest.mark.parametrize("change, field, words", [
    ({"methods": ["ralm", "magic"]}, "methods", "'magic'"),
    ({"seeds": []}, "seeds", "no cell"),
    ({"methods": []}, "methods", "no cell"),
    ({"datasets": ["no/such/file.jsonl"]}, "datasets", "existing dataset file"),
    ({"noise": ["counterfeit"]}, "noise", "'counterfeit'"),
    ({"recipes": ["nope"]}, "recipes", "'nope'"),
    ({"train": {"method": "full"}}, "train", "per cell"),
    ({"colour": "blue"}, "colour", "unknown field"),
])
def test_bad_specs_name_the_field(change: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        StudySpec.from_dict({"datasets": ["demo"], **change})
    assert field in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("change, words", [
    ({"methods": ["ralm", "magic"]}, "StudySpec.methods = 'magic' is not allowed"),
    ({"seeds": []}, "StudySpec.seeds = [] is not allowed"),
    ({"datasets": ["missing.jsonl"]}, "StudySpec.datasets = 'missing.jsonl' is not allowed"),
])
def test_bad_study_files_exit_2_with_one_line(capsys: pytest.CaptureFixture, tmp_path: Path, change: dict,
                                              words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "datasets": ["demo"], **change}))
    line = reason(capsys, "study", path)
    assert words in line
    line = reason(capsys, "submit", "study", path)  # refused before a job is queued
    assert words in line


def test_missing_study_file_is_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert "does not exist" in reason(capsys, "study", tmp_path / "nope.yaml")


def test_cli_plan_lists_cells_without_running(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "methods": ["ralm", "neuro_rit"], "seeds": [0, 1]}))
    out = ok(capsys, "study", path, "--plan", "--out", tmp_path / "out")
    assert out.count("pending") == 4 and not (tmp_path / "out").exists()


def test_example_studies_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "studies"
    for path in sorted(root.glob("*.yaml")):
        try:
            spec = StudySpec.from_yaml(path)
        except ConfigError as exc:
            if "datasets" in str(exc) and "../shared" in path.read_text():
                pytest.skip(f"{path.name}: ../shared/data is absent here")
            raise
        assert spec.cells()


# ---- the counting recipe (IRCAN / SCoNE) ---------------------------------------------------------


def test_count_recipe_on_a_hand_computed_case() -> None:
    grids = [
        torch.tensor([[5.0, 4.0, 0.0], [1.0, -1.0, 0.0]]),  # top 2 positive: (0,0), (0,1)
        torch.tensor([[0.0, 3.0, 0.0], [2.0, 0.0, -1.0]]),  # (0,1), (1,0)
        torch.tensor([[0.0, 0.0, 1.0], [0.0, -5.0, 0.5]]),  # (0,2), (1,2)
        torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]]),  # nothing positive: selects nothing
    ]
    # counts: (0,1) 2; (0,0), (0,2), (1,0), (1,2) 1 each; ties by mean score: (0,0) 1.0, (1,0) 0.5, ...
    rule = SelectionRule(mode="count", per_example=2, keep=2)
    assert select_neurons(grids, rule).neurons() == [(0, 0), (0, 1)]
    assert select_neurons(grids, SelectionRule(mode="count", per_example=2, keep=3)).neurons() == [(0, 0), (0, 1), (1, 0)]
    everything = select_neurons(grids, SelectionRule(mode="count", per_example=2, keep=100))
    assert everything.neurons() == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2)]  # never a neuron no example selected


def test_count_recipe_fields_are_validated_and_keep_old_keys() -> None:
    with pytest.raises(ConfigError, match="keep"):
        SelectionRule(mode="count", keep=0)
    assert "keep" not in SelectionRule().to_dict()  # rules from before the recipe hash as before
    assert SelectionRule.from_dict(SelectionRule(mode="count", keep=7).to_dict()).keep == 7


# ---- the Studies page ----------------------------------------------------------------------------


def test_studies_page_shows_examples_then_a_finished_study(app_env: Path, tiny_llama_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from neurorit.study import default_study_dir

    page = str(Path(__file__).resolve().parent.parent / "pages" / "studies.py")
    at = AppTest.from_file(page, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Studies"
    assert "name:" in at.text_area[0].value  # an example study is loaded into the editor
    assert any("No study yet" in str(i.value) for i in at.info)

    at.text_area[0].set_value("name: x\nmethods: [ralm, magic]\n").run()
    assert any("magic" in str(e.value) for e in at.error)  # the spec's own message, no traceback

    spec = _tiny_spec(tiny_llama_dir, methods=["ralm", "random_mask"], seeds=[0], n_distractors=[2])
    run_study(spec, default_study_dir(spec))
    at = AppTest.from_file(page, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("plotly_chart") and len(at.dataframe) >= 3
    assert "2 of 2 cells done" in " ".join(p.proto.text for p in at.get("progress"))
    assert "Seeds pooled, paired" in [h.value for h in at.subheader]
    pooled = next(d.value for d in at.dataframe if "reference" in d.value.columns)
    assert pooled[["method", "reference"]].values.tolist() == [["ralm", "random_mask"], ["random_mask", "ralm"]]


def test_submit_study_runs_as_a_background_job(capsys: pytest.CaptureFixture, tiny_llama_dir: Path,
                                               tmp_path: Path) -> None:
    from neurorit import jobs

    spec = _tiny_spec(tiny_llama_dir, methods=["ralm"], seeds=[0], n_distractors=[2])
    path = tmp_path / "tiny.yaml"
    path.write_text(spec.to_yaml())
    out = ok(capsys, "submit", "study", path, "--out", tmp_path / "job-study")
    assert out.startswith("submitted study-")
    job = jobs.list_jobs(kind="study")[0]
    finished = jobs.wait(job.id, timeout=300)
    assert finished.state == "done", finished.log_tail()
    assert finished.artifacts["study"] == str(tmp_path / "job-study")
    assert len(read_results(tmp_path / "job-study")) == 1
