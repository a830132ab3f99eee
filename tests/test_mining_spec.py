"""The mining spec: one description per field, from which the CLI's flags and the app's forms come.

Checks that every described field has a flag and a widget of the right kind, that flags left out
leave the config file's values alone, that a spec survives YAML, that the CLI and the workbench
build the same spec (same key) for the same settings, and that the spec module keeps torch out of
the CLI's start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neurorit.errors import ConfigError
from neurorit.flags import add_flags, field_specs, given_flags
from neurorit.mining_spec import AttributionConfig, MiningSpec, SelectionRule
from neurorit.prompts import PromptConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = (AttributionConfig, SelectionRule, MiningSpec)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    for cls, prefix in zip(CONFIGS, ("mining", "selection", "spec")):
        add_flags(p, cls, prefix=prefix)
    return p


def _overrides(argv: list[str]) -> dict[str, dict]:
    args = _parser().parse_args(argv)
    return {prefix: given_flags(args, cls, prefix=prefix) for cls, prefix in zip(CONFIGS, ("mining", "selection", "spec"))}


def test_every_described_field_is_a_flag_of_its_kind() -> None:
    p = _parser()
    flags = {a.dest: a for a in p._actions}
    for cls, prefix in zip(CONFIGS, ("mining", "selection", "spec")):
        described = field_specs(cls)
        assert described, cls
        for spec in described:
            action = flags[f"{prefix}__{spec.name}"]
            assert action.option_strings == [spec.flag] and action.default is None
            if spec.kind == "choice":
                assert tuple(action.choices) == spec.choices
            if spec.kind == "bool":
                assert action.const is (not spec.default)
    # the fields every config has, checked by hand once
    assert {s.name for s in field_specs(SelectionRule)} == {f.name for f in dataclasses.fields(SelectionRule)}
    assert {s.name for s in field_specs(AttributionConfig)} == {f.name for f in dataclasses.fields(AttributionConfig)}
    assert {s.flag for s in field_specs(MiningSpec)} == {"--irrelevant-target", "--preview", "--no-cache"}


def test_flags_give_only_what_was_typed_parsed_to_the_field_type() -> None:
    assert _overrides([]) == {"mining": {}, "selection": {}, "spec": {}}
    got = _overrides(["--layers", "0-2, 7", "--n-steps", "8", "--mode", "count", "--keep", "12", "--use-abs",
                      "--no-cache", "--irrelevant-target", "own_answer", "--threshold", "0.3"])
    assert got == {"mining": {"layers": (0, 1, 2, 7), "n_steps": 8},
                   "selection": {"mode": "count", "keep": 12, "use_abs": True, "threshold": 0.3},
                   "spec": {"use_cache": False, "irrelevant_target": "own_answer"}}
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mode", "median"])  # not a choice
    with pytest.raises(ConfigError, match="--layers"):
        _overrides(["--layers", "3-1"])


def test_flags_override_the_file_and_leave_the_rest(tmp_path: Path) -> None:
    file_data = {"data": "demo", "limit": 3, "mining": {"n_steps": 5, "target": "first_token"},
                 "selection": {"mode": "top_k", "top_k": 7}, "prompt": {"n_distractors": 2}}
    spec = MiningSpec.from_sources(file_data, {"mining": {"n_steps": 9}, "selection": {}, "prompt": {"seed": None}})
    assert spec.mining == AttributionConfig(n_steps=9, target="first_token")
    assert spec.selection == SelectionRule(mode="top_k", top_k=7)
    assert spec.prompt == PromptConfig(n_distractors=2) and spec.limit == 3
    # positions 'all' with no baseline anywhere takes the zero baseline, as the flags always did
    assert MiningSpec.from_sources({}, {"mining": {"positions": "all"}}).mining.baseline == "zero"
    with pytest.raises(ConfigError, match="no_context"):
        MiningSpec.from_sources({"mining": {"baseline": "no_context"}}, {"mining": {"positions": "all"}})


def test_spec_round_trips_through_yaml(tmp_path: Path) -> None:
    spec = MiningSpec(data="x.jsonl", limit=5, offset=2, seed=3, prompt=PromptConfig(n_distractors=1, seed=4),
                      mining=AttributionConfig(layers=(1, 3), n_steps=6), selection=SelectionRule(mode="count", keep=9),
                      irrelevant_target="own_answer", preview=True)
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    again = MiningSpec.from_yaml(path)
    assert again == spec and again.key() == spec.key()
    assert yaml.safe_load(path.read_text())["mining"]["layers"] == [1, 3]


@pytest.mark.parametrize("data, message", [
    ({"minning": {}}, "unknown key.*minning"),
    ({"limit": -1}, "limit = -1 is not allowed.*never taken from the end"),
    ({"mining": {"n_steps": 0}}, "n_steps"),
    ({"selection": {"keep": True}}, "keep"),
    ({"selection": 3}, "section 'selection' must be a mapping"),
    ({"model": ""}, "model = '' is not allowed"),
    ({"irrelevant_target": "gold"}, "irrelevant_target"),
])
def test_bad_spec_files_are_one_message_naming_the_file(tmp_path: Path, data: dict, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as info:
        MiningSpec.from_yaml(path)
    if not any(k in data for k in ("mining", "selection", "irrelevant_target")):
        assert str(path) in str(info.value)


def test_cli_and_workbench_build_the_same_spec(tmp_path: Path) -> None:
    """`neurorit mine` flags and the forms' values give equal specs, hence the same job file and key."""
    from neurorit.cli import _mining_spec, build_parser

    args = build_parser().parse_args(["mine", "--data", "demo", "--n-steps", "8", "--layers", "0-3", "--mode", "count",
                                      "--keep", "12", "--irrelevant-target", "own_answer", "--n-distractors", "2"])
    from_cli = _mining_spec(args)
    from_forms = MiningSpec(data="demo", prompt=PromptConfig(n_distractors=2),
                            mining=AttributionConfig(n_steps=8, layers=(0, 1, 2, 3)),
                            selection=SelectionRule(mode="count", keep=12), irrelevant_target="own_answer")
    assert from_cli == from_forms and from_cli.key() == from_forms.key()


def test_the_spec_module_and_the_cli_do_not_import_torch() -> None:
    code = "import sys, neurorit.cli, neurorit.mining_spec; neurorit.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_submitted_spec_is_the_job_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    from neurorit import jobs

    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(jobs, "submit", lambda kind, argv: seen.append((kind, argv)) or "job")
    data = tmp_path / "examples.jsonl"
    data.write_text("")
    monkeypatch.chdir(tmp_path)
    spec = MiningSpec(data="examples.jsonl", mining=AttributionConfig(n_steps=3))
    assert spec.submit() == "job"
    kind, argv = seen[0]
    assert kind == "mine" and argv[:2] == ["mine", "--config"] and "--quiet" in argv
    written = MiningSpec.from_yaml(argv[2])
    assert written == dataclasses.replace(spec, data=str(data.resolve()))  # a relative file is made absolute


def test_a_field_marked_omit_default_changes_no_key_while_at_its_default() -> None:
    from neurorit.configs import stable_hash, to_dict
    from neurorit.flags import about

    @dataclasses.dataclass(frozen=True)
    class Before:
        a: int = 1

    @dataclasses.dataclass(frozen=True)
    class After:
        a: int = 1
        b: int | None = dataclasses.field(default=None, metadata=about("added later", omit_default=True))

    assert to_dict(After()) == to_dict(Before()) and stable_hash(After()) == stable_hash(Before())
    assert to_dict(After(b=3)) == {"a": 1, "b": 3}
