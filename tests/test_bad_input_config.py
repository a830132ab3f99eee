"""Bad input to configs and the command line: values of the wrong type in YAML configs, negative
--limit / --offset, empty data files, duplicate example ids, a bad --layers, and when to suggest
--format. Every refusal is exit 2 with one stderr line naming the bad value, flag or file, and
leaves the cache untouched. Plus the one coercion every config shares, on good values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_harness import ok, reason, tree_snapshot
from neurorit.attribution import AttributionConfig
from neurorit.configs import coerce_value, from_dict
from neurorit.errors import ConfigError
from neurorit.evaluation import EvalConfig
from neurorit.neurons import SelectionRule
from neurorit.prompts import PromptConfig
from neurorit.training import TrainConfig


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def refused(capsys: pytest.CaptureFixture, cache: Path, *argv: object) -> str:
    """Run a command that must be refused: exit 2, one line, and the cache exactly as before."""
    before = tree_snapshot(cache)
    message = reason(capsys, *argv)
    assert tree_snapshot(cache) == before, message
    return message


def write_yaml(tmp_path: Path, text: str) -> Path:
    """A config file written as text, so that YAML 1.1 reads it as a user's file would be read."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def record(example_id: str) -> dict:
    return {"id": example_id, "question": f"Who wrote {example_id}?", "answers": ["Ann"],
            "passages": [{"text": "Ann wrote it.", "relevant": True}, {"text": "Bob sang.", "relevant": False}]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------------------------
# the shared coercion: good values are read as the field's type


@pytest.mark.parametrize("value, hint, expected", [
    ("2e-1", float, 0.2),  # YAML 1.1 reads `2e-1` (no dot) as a string
    (" 0.5 ", float, 0.5),
    (3, float, 3),
    ("3", int, 3),
    (7, int, 7),
    (None, int | None, None),
    ("4", int | None, 4),
    ([1, "2"], tuple[int, ...], (1, 2)),
    ((0, 3), tuple[int, ...] | None, (0, 3)),
    (["relevant"], tuple[str, ...], ("relevant",)),
    (True, bool, True),
])
def test_coercion_accepts_good_values(value, hint, expected):
    coerced = coerce_value("Owner", "field", value, hint)
    assert coerced == expected and type(coerced) is type(expected)


@pytest.mark.parametrize("value, hint, allowed", [
    ("abc", int, "an integer"),
    (True, int, "true / false is not a number"),
    (2.5, int, "an integer"),
    ("abc", float, "a finite number"),
    ("nan", float, "a finite number"),
    (False, float, "true / false is not a number"),
    (13, tuple[int, ...], "a list of integers, e.g. [13]"),
    ("relevant", tuple[str, ...], "a list of strings, e.g. ['relevant']"),
    ([1, "x"], tuple[int, ...], "a list of integers"),
    ("yes", bool, "true or false"),
])
def test_coercion_refuses_bad_values_naming_field_value_and_allowed(value, hint, allowed):
    with pytest.raises(ConfigError) as info:
        coerce_value("Owner", "field", value, hint)
    message = str(info.value)
    assert f"Owner.field = {value!r}" in message and allowed in message


def test_every_config_coerces_strings_from_yaml_and_hashes_as_typed():
    rule = from_dict(SelectionRule, yaml.safe_load("threshold: 2e-1\ntop_k: '5'\nsupport: 5e-1"))
    assert rule == SelectionRule(threshold=0.2, top_k=5, support=0.5)
    mining = from_dict(AttributionConfig, {"max_rows_per_pass": "8", "n_steps": "3", "layers": [1, "0"]})
    assert mining == AttributionConfig(max_rows_per_pass=8, n_steps=3, layers=(0, 1)) and mining.key() == \
        AttributionConfig(n_steps=3, layers=(0, 1)).key()
    assert PromptConfig.from_dict({"n_distractors": "2", "seed": "1"}) == PromptConfig(n_distractors=2, seed=1)
    assert EvalConfig.from_dict({"noise_levels": ["0", 2], "max_new_tokens": "4"}) == \
        EvalConfig(noise_levels=(0, 2), max_new_tokens=4)
    train = TrainConfig.from_dict({"method": "full", "lr": "1e-4", "n_distractors": ["1", 2], "max_steps": "6"})
    assert train == TrainConfig(method="full", lr=1e-4, n_distractors=(1, 2), max_steps=6)
    assert train.hash() == TrainConfig(method="full", lr=1e-4, n_distractors=(1, 2), max_steps=6).hash()


@pytest.mark.parametrize("cls, fields, named", [
    (SelectionRule, {"threshold": "abc"}, "SelectionRule.threshold = 'abc'"),
    (SelectionRule, {"top_k": True}, "SelectionRule.top_k = True"),
    (SelectionRule, {"use_abs": "no"}, "SelectionRule.use_abs = 'no'"),
    (AttributionConfig, {"max_rows_per_pass": "abc"}, "AttributionConfig.max_rows_per_pass = 'abc'"),
    (AttributionConfig, {"n_steps": True}, "AttributionConfig.n_steps = True"),
    (AttributionConfig, {"layers": 13}, "AttributionConfig.layers = 13"),
    (PromptConfig, {"n_distractors": "abc"}, "PromptConfig.n_distractors = 'abc'"),
    (EvalConfig, {"views": "relevant"}, "EvalConfig.views = 'relevant'"),
    (TrainConfig, {"method": "full", "n_distractors": 4}, "TrainConfig.n_distractors = 4"),
    (TrainConfig, {"method": "full", "target_layers": 13}, "TrainConfig.target_layers = 13"),
    (TrainConfig, {"method": "full", "max_steps": True}, "TrainConfig.max_steps = True"),
])
def test_configs_built_directly_refuse_wrong_types_with_a_config_error(cls, fields, named):
    with pytest.raises(ConfigError, match="is not allowed; expected") as info:
        cls(**fields)  # never a TypeError from deep inside validation
    assert named in str(info.value)


# ----------------------------------------------------------------------------------------------
# 1. YAML values of the wrong type: exit 2, one line naming the field and the value


@pytest.mark.parametrize("command, text, named", [
    ("mine", "selection: {threshold: abc}", ["threshold", "'abc'"]),
    ("mine", "selection: {support: true}", ["support", "True"]),
    ("mine", "mining: {max_rows_per_pass: abc}", ["max_rows_per_pass", "'abc'"]),
    ("mine", "mining: {n_steps: true}", ["n_steps", "True"]),
    ("mine", "mining: {layers: 13}", ["layers", "13", "[13]"]),
    ("mine", "prompt: {n_distractors: abc}", ["n_distractors", "'abc'"]),
    ("mine", "limit: abc", ["limit", "'abc'"]),
    ("mine", "limit: true", ["limit", "True"]),
    ("mine", "limit: -1", ["limit", "-1"]),
    ("mine", "limit: 0", ["limit", "0"]),
    ("mine", "offset: -1", ["offset", "-1"]),
    ("mine", "offset: abc", ["offset", "'abc'"]),
    ("mine", "add_distractors: -2", ["add_distractors", "-2"]),
    ("mine", "data: 3", ["data", "3"]),
    ("evaluate", "eval: {views: relevant}", ["views", "'relevant'", "['relevant']"]),
    ("evaluate", "eval: {max_new_tokens: abc}", ["max_new_tokens", "'abc'"]),
    ("evaluate", "limit: -1", ["limit", "-1"]),
    ("evaluate", "offset: -3", ["offset", "-3"]),
    ("ablate", "limit: abc", ["limit", "'abc'"]),
    ("ablate", "offset: -1", ["offset", "-1"]),
])
def test_cli_config_file_with_a_value_of_the_wrong_type(tiny_llama_dir, tmp_path, cache, capsys, command, text, named):
    config = write_yaml(tmp_path, text + "\n")
    extra = ["--mask", tmp_path / "no-mask"] if command == "ablate" else []
    message = refused(capsys, cache, command, "--model", tiny_llama_dir, "--config", config, *extra)
    assert all(part in message for part in named), message
    if text.startswith(("limit", "offset", "add_distractors", "data")):  # a top-level key: the file is named
        assert str(config) in message


@pytest.mark.parametrize("text, named", [
    ("method: full\nn_distractors: 4", ["n_distractors", "4", "[4]"]),
    ("method: full\ntarget_layers: 13", ["target_layers", "13", "[13]"]),
    ("method: full\nmax_steps: true", ["max_steps", "True"]),
    ("method: full\nbatch_size: abc", ["batch_size", "'abc'"]),
    ("method: full\nlr: abc", ["lr", "'abc'"]),
    ("method: full\nlimit: -1", ["limit", "-1"]),
])
def test_cli_training_config_with_a_value_of_the_wrong_type(tmp_path, cache, capsys, text, named):
    config = write_yaml(tmp_path, text + "\n")
    message = refused(capsys, cache, "train", "--config", config)
    assert all(part in message for part in named), message


def test_yaml_strings_for_numbers_are_read_as_numbers(tiny_llama_dir, tmp_path, cache, capsys):
    """`threshold: 2e-1` (a string in YAML 1.1) once crashed; it and quoted counts now just work."""
    config = write_yaml(tmp_path, "selection: {threshold: 2e-1}\nmining: {max_rows_per_pass: '8', n_steps: '2'}\n"
                                  "limit: '2'\noffset: '1'\n")
    out = ok(capsys, "mine", "--model", tiny_llama_dir, "--config", config, "--quiet")
    folder = Path(out.strip().splitlines()[-1].removeprefix("mined sets: "))
    saved = json.loads((folder / "mined.json").read_text())
    provenance = saved["provenance"]
    assert provenance["selection"]["threshold"] == 0.2 and provenance["mining"]["n_steps"] == 2
    assert provenance["n_examples_given"] == 2
    assert saved["example_ids"] == ["demo-02", "demo-03"]  # offset 1, limit 2


# ----------------------------------------------------------------------------------------------
# 3. negative --limit / --offset (and --add-distractors) on every command that takes them


COMMANDS = {
    "mine": [],
    "evaluate": [],
    "ablate": ["--mask", "no-mask"],
    "what-if": ["--mask", "no-mask", "--example", "demo-01"],
}


def _argv(command: str) -> list[str]:
    return ["ablate" if command == "what-if" else command, *COMMANDS[command]]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("flag, value", [("--limit", "-1"), ("--limit", "0"), ("--offset", "-1"),
                                         ("--add-distractors", "-2")])
def test_negative_counts_are_refused_naming_the_flag(tiny_llama_dir, cache, capsys, command, flag, value):
    message = refused(capsys, cache, *_argv(command), "--model", tiny_llama_dir, flag, value)
    assert f"{flag} {value}" in message, message


@pytest.mark.parametrize("command", ["mine", "evaluate", "ablate"])
@pytest.mark.parametrize("flag", ["--limit", "--offset"])
def test_submit_refuses_negative_counts_before_queueing(cache, capsys, command, flag):
    argv = _argv(command)
    message = refused(capsys, cache, "submit", *argv, flag, "-1")
    assert f"{flag} -1" in message


def test_train_and_jobs_refuse_a_negative_limit(cache, capsys):
    message = refused(capsys, cache, "train", "--method", "full", "--limit", "-1")
    assert "limit" in message and "-1" in message
    assert "--limit -1" in refused(capsys, cache, "jobs", "list", "--limit", "-1")


def test_an_offset_past_the_end_names_the_offset(tiny_llama_dir, cache, capsys):
    message = refused(capsys, cache, "evaluate", "--model", tiny_llama_dir, "--offset", "99")
    assert "offset 99" in message and "42" in message


# ----------------------------------------------------------------------------------------------
# 8. empty file, duplicate ids, --layers -1, the --format suggestion


@pytest.mark.parametrize("name", ["empty.jsonl", "popqa-empty.jsonl"])  # unknown format; format in the name
@pytest.mark.parametrize("command", ["mine", "evaluate"])
@pytest.mark.parametrize("given", [[], ["--format", "neurorit"]])
def test_an_empty_data_file_is_named_as_empty(tiny_llama_dir, tmp_path, cache, capsys, name, command, given):
    data = tmp_path / name
    data.write_text("\n\n")  # blank lines only
    message = refused(capsys, cache, command, "--model", tiny_llama_dir, "--data", data, *given)
    assert f"{data} is empty" in message
    assert "--limit" not in message and "cannot be detected" not in message


@pytest.mark.parametrize("command", ["mine", "evaluate", "ablate", "what-if"])
def test_duplicate_example_ids_are_refused_naming_the_first(tiny_llama_dir, tmp_path, cache, capsys, command):
    data = write_jsonl(tmp_path / "dups.jsonl", [record("q1"), record("q2"), record("q2"), record("q1")])
    argv = _argv(command) if command != "what-if" else ["ablate", "--mask", "no-mask", "--example", "q2"]
    message = refused(capsys, cache, *argv, "--model", tiny_llama_dir, "--data", data)
    assert "'q2'" in message and "occurs twice" in message and str(data) in message


def test_duplicate_ids_outside_the_selection_do_not_matter(tiny_llama_dir, tmp_path, cache, capsys):
    data = write_jsonl(tmp_path / "dups.jsonl", [record("q1"), record("q2"), record("q1")])
    # the first two are unique: the refusal is now about the missing mask, not the ids
    message = refused(capsys, cache, "ablate", "--mask", tmp_path / "no-mask", "--model", tiny_llama_dir,
                      "--data", data, "--limit", "2")
    assert "occurs twice" not in message


@pytest.mark.parametrize("command, flag", [("mine", "--layers"), ("evaluate", "--noise-levels"),
                                           ("train", "--target-layers"), ("train", "--n-distractors")])
def test_a_negative_index_list_names_the_flag_and_the_value(tiny_llama_dir, cache, capsys, command, flag):
    extra = ["--method", "full"] if command == "train" else []
    message = refused(capsys, cache, command, *extra, "--model", tiny_llama_dir, flag, "-1")
    assert message.startswith(f"neurorit: error: {flag}:") and "'-1'" in message
    assert "list:" not in message


def test_format_is_suggested_only_when_not_given(tiny_llama_dir, tmp_path, cache, capsys):
    popqa = {"question": "Who?", "answers": ["Ann"], "ctxs": [{"title": "", "text": "Ann did."}]}
    data = write_jsonl(tmp_path / "mixed.jsonl", [popqa, {"question": "Who?", "answers": ["Ann"]}])
    detected = refused(capsys, cache, "evaluate", "--model", tiny_llama_dir, "--data", data)
    assert "line 2" in detected and "missing field 'ctxs'" in detected
    assert "pass --format explicitly" in detected and "format=" not in detected

    given = refused(capsys, cache, "evaluate", "--model", tiny_llama_dir, "--data", data, "--format", "popqa")
    assert "missing field 'ctxs'" in given and "popqa was given" in given
    assert "pass --format" not in given and "format=" not in given

    odd = write_jsonl(tmp_path / "odd.jsonl", [{"q": "Who?"}])
    unknown = refused(capsys, cache, "mine", "--model", tiny_llama_dir, "--data", odd)
    assert "cannot tell the format" in unknown and "Pass --format explicitly" in unknown and "format=" not in unknown

    wrong_type = write_jsonl(tmp_path / "types.jsonl", [{"question": "Who?", "answers": ["Ann"], "ctxs": 5}])
    for given_flag, suggested in (([], True), (["--format", "popqa"], False)):
        message = refused(capsys, cache, "mine", "--model", tiny_llama_dir, "--data", wrong_type, *given_flag)
        assert "wrong type" in message and ("pass the right --format" in message) is suggested
        assert "format=" not in message
