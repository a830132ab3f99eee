"""Which passage drives the answer (neurorit.passages, its CLI, its view and its Explore section).

Oracles: the completeness axiom of IG over the input embeddings; captum's IntegratedGradients on
the Hugging Face model's `inputs_embeds` (an independent implementation and entry point); the
leave-one-out numbers against answer_logprob on prompts built by build_prompt from examples
without that passage; the neuron means against run_with_cache; escaping checked by parsing the HTML.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from captum.attr import IntegratedGradients

from neurorit.data import Passage, RagExample
from neurorit.errors import ConfigError
from neurorit.decoding import answer_logprob
from neurorit.mining import MinedNeurons, prompt_for
from neurorit.models import frozen, model_identity
from neurorit.neurons import NeuronSet
from neurorit.passages import PassageAttribution, PassageConfig, attribute_passages
from neurorit.prompts import PromptConfig, build_prompt, passage_spans
from neurorit.sites import EMBED_HOOK
from cli_harness import ok, reason, run
from scale import assert_close_in_scale

ROOT = Path(__file__).resolve().parent.parent

from app import passages_view

STEPS = 64  # Gauss-Legendre nodes: the random tiny Llama's path needs ~64 for a gap under 1 %

REL = Passage(text="Pride and Prejudice is an 1813 novel by Jane Austen.", title="Pride and Prejudice", relevant=True)
IRR = (
    Passage(text="Jane Eyre is a novel by Charlotte Bronte.", title="Jane Eyre", relevant=False),
    Passage(text="Coffee is a drink brewed from roasted beans.", title="Coffee", relevant=False),
    Passage(text="Knitting makes fabric from yarn.", title="", relevant=False),
)
EXAMPLE = RagExample(id="pp", question="Who wrote Pride and Prejudice?", answers=("Jane Austen",),
                     passages=(REL,) + IRR)
PROMPTS = PromptConfig(n_distractors=3, relevant_position=2)  # shown: IRR[0], IRR[1], REL, IRR[2]


@pytest.fixture(scope="module")
def results(tiny_llama, tiny_gpt2) -> dict[str, PassageAttribution]:
    """One attribution per tiny model, with a few neurons read on each passage."""
    out = {}
    for name, model in (("llama", tiny_llama), ("gpt2", tiny_gpt2)):
        neurons = NeuronSet.from_neurons([(0, 3), (1, 0), (1, 17), (1, 47)], 2, 48, "some neurons")
        out[name] = attribute_passages(model, EXAMPLE, PROMPTS, PassageConfig(n_steps=STEPS), neurons=neurons)
    return out


@pytest.fixture(params=["llama", "gpt2"])
def case(request, results, tiny_llama, tiny_gpt2):  # type: ignore[no-untyped-def]
    return (tiny_llama if request.param == "llama" else tiny_gpt2), results[request.param]


# ----------------------------------------------------------------------------------------------
# IG over the input embeddings


def test_ig_meets_completeness(case) -> None:
    model, result = case
    assert result.relative_gap < 0.01, (result.gap, result.f_input, result.f_baseline)
    assert abs(result.f_input - result.f_baseline) > 0.05  # the path moves f: the gap is measured, not floored
    torch.testing.assert_close(result.f_input, result.logprob, rtol=0, atol=1e-4)  # the evaluation's log-prob


def test_too_few_steps_show_in_the_gap_and_refinement_closes_it(tiny_llama) -> None:
    coarse = attribute_passages(tiny_llama, EXAMPLE, PROMPTS, PassageConfig(n_steps=8, refine_gap=None))
    assert coarse.relative_gap > 0.01  # the gap is measured, not assumed
    assert coarse.config["steps_used"] == 8 and coarse.config["intervals"] == [[0.0, 1.0]]
    refined = attribute_passages(tiny_llama, EXAMPLE, PROMPTS, PassageConfig(n_steps=8, refine_gap=0.01))
    assert refined.relative_gap <= 0.01 < coarse.relative_gap
    cuts = refined.config["intervals"]
    assert cuts[0][0] == 0.0 and cuts[-1][1] == 1.0 and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    assert refined.config["steps_used"] == 8 + 16 * (len(cuts) - 1)  # each bisection: 16 new nodes
    assert refined.f_baseline == coarse.f_baseline


def _captum_token_ig(model, prompt, intervals, baseline_token: int, moved: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """IG per prompt token by captum through the HF model's inputs_embeds (no hook on the embedding),
    8 Gauss-Legendre nodes on each interval [a, b] of the path (captum from z(a) to z(b)), summed;
    the positions not `moved` keep their embedding in the baseline."""
    hf = model.original_model
    table = hf.get_input_embeddings().weight
    ids = torch.tensor([list(prompt.token_ids) + list(prompt.answer_ids[:-1])])
    targets = torch.tensor(prompt.answer_ids)
    n_prompt = prompt.n_tokens
    embeds = table[ids].detach().float()  # [1, T, d_model]
    x, rest = embeds[:, :n_prompt], embeds[:, n_prompt:]
    base = torch.where(moved[None, :, None], table[baseline_token].detach().float(), x)

    def forward(z: torch.Tensor) -> torch.Tensor:  # [batch, P, d_model] -> [batch]
        full = torch.cat([z, rest.expand(z.shape[0], -1, -1)], dim=1)
        logits = hf(inputs_embeds=full).logits[:, n_prompt - 1 :].float()
        logp = logits.log_softmax(-1)
        return logp.gather(-1, targets.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1).sum(-1)

    total = torch.zeros(n_prompt, dtype=torch.float64)
    with frozen(model):
        for a, b in intervals:
            attr = IntegratedGradients(forward).attribute(base + b * (x - base), baselines=base + a * (x - base),
                                                          n_steps=8, method="gausslegendre")
            total += attr[0].sum(-1).detach().double()
    return total


def test_token_ig_matches_captum(case) -> None:
    model, result = case
    prompt = prompt_for(model, EXAMPLE, "noisy", PROMPTS)
    table = model.original_model.get_input_embeddings().weight
    # the baseline token: pad, else eos, else bos, the first with a non-zero embedding row
    token = next(t for t in (model.tokenizer.pad_token_id, model.tokenizer.eos_token_id, model.tokenizer.bos_token_id)
                 if t is not None and table[t].abs().sum() > 0)
    moved = torch.zeros(prompt.n_tokens, dtype=torch.bool)
    for a, b in result.spans:  # the default scope: the passages' tokens
        moved[a:b] = True
    reference = _captum_token_ig(model, prompt, result.config["intervals"], token, moved)
    assert_close_in_scale(result.token_ig, reference, rel=1e-4)
    assert (result.token_ig[~moved] == 0).all()  # outside the scope x' = x: exactly no attribution


@pytest.mark.parametrize("scope", ["content", "prompt"])
def test_wider_scopes_attribute_the_question_and_the_template_too(tiny_gpt2, scope) -> None:
    result = attribute_passages(tiny_gpt2, EXAMPLE, PROMPTS, PassageConfig(n_steps=STEPS, scope=scope))
    assert result.relative_gap < 0.01
    q0, q1 = result.question_span
    assert result.token_ig[q0:q1].abs().sum() > 0
    template = result.token_ig[: result.spans[0][0]]  # the chat template and the instruction
    assert (template.abs().sum() > 0) == (scope == "prompt")


def test_the_zero_baseline_blanks_the_passages_to_zero_embeddings(tiny_gpt2) -> None:
    zero = attribute_passages(tiny_gpt2, EXAMPLE, PROMPTS, PassageConfig(n_steps=STEPS, baseline="zero"))
    prompt = prompt_for(tiny_gpt2, EXAMPLE, "noisy", PROMPTS)
    tokens = torch.tensor([list(prompt.token_ids) + list(prompt.answer_ids[:-1])])

    def zero_prompt(x, hook):  # type: ignore[no-untyped-def]
        x = x.clone()
        for a, b in zero.spans:  # the default scope: every passage blanked, the rest as it was
            x[:, a:b] = 0
        return x

    with torch.no_grad(), tiny_gpt2.hooks(fwd_hooks=[(EMBED_HOOK, zero_prompt)]):
        logits = tiny_gpt2(tokens)[0, prompt.n_tokens - 1 :].float()
    expected = float(logits.log_softmax(-1).gather(-1, torch.tensor(prompt.answer_ids)[:, None]).sum())
    torch.testing.assert_close(zero.f_baseline, expected, rtol=0, atol=1e-4)
    assert zero.relative_gap < 0.01  # GPT-2's positional embeddings keep the path off the norm's singular point


def test_chunking_does_not_change_the_attribution(tiny_llama, results) -> None:
    one_row = attribute_passages(tiny_llama, EXAMPLE, PROMPTS, PassageConfig(n_steps=STEPS, max_rows_per_pass=1))
    assert_close_in_scale(one_row.token_ig, results["llama"].token_ig, rel=1e-4)
    torch.testing.assert_close(one_row.f_baseline, results["llama"].f_baseline, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# leave one out, spans, neurons


def test_leave_one_out_equals_separate_runs_on_prompts_without_the_passage(case) -> None:
    model, result = case
    tok = model.tokenizer
    shown = prompt_for(model, EXAMPLE, "noisy", PROMPTS)
    assert [p.title for p in shown.passages] == ["Jane Eyre", "Coffee", "Pride and Prejudice", ""]
    fewer = PromptConfig(n_distractors=2, relevant_position=1)
    without = [  # each built by build_prompt from an example lacking that passage
        build_prompt(EXAMPLE.with_passages((REL, IRR[1], IRR[2])), "noisy", fewer, tok),
        build_prompt(EXAMPLE.with_passages((REL, IRR[0], IRR[2])), "noisy", fewer, tok),
        build_prompt(EXAMPLE, "irrelevant", PROMPTS, tok),
        build_prompt(EXAMPLE.with_passages((REL, IRR[0], IRR[1])), "noisy", PromptConfig(n_distractors=2,
                     relevant_position=2), tok),
    ]
    for i, prompt in enumerate(without):
        kept = [p for j, p in enumerate(shown.passages) if j != i]
        assert list(prompt.passages) == kept
    expected = [answer_logprob(model, p) for p in without]
    assert result.logprob == answer_logprob(model, shown)
    assert list(result.logprob_without) == expected  # the same forward: bit-identical
    assert list(result.loo) == [result.logprob - e for e in expected]
    table = result.table()
    assert list(table.passage) == [1, 2, 3, 4] and list(table.relevant) == [False, False, True, False]
    assert list(table.loo_delta) == list(result.loo)


def test_passage_sums_are_sums_of_token_attributions_in_the_spans(case) -> None:
    model, result = case
    prompt = prompt_for(model, EXAMPLE, "noisy", PROMPTS)
    spans = passage_spans(prompt, model.tokenizer)
    assert result.spans == spans.passages and result.question_span == spans.question
    for i, ((a, b), passage) in enumerate(zip(result.spans, prompt.passages), start=1):
        text = model.tokenizer.decode(prompt.token_ids[a:b])
        assert text.strip().startswith(f"Passage {i}") and text.strip().endswith(passage.text), text
        torch.testing.assert_close(result.passage_ig[i - 1], result.token_ig[a:b].sum())
    bounds = sorted(result.spans + (result.question_span,))
    assert all(b0 <= a1 for (_, b0), (a1, _) in zip(bounds, bounds[1:]))  # disjoint
    assert model.tokenizer.decode(prompt.token_ids[slice(*result.question_span)]) == f"Question: {EXAMPLE.question}"
    tokens = result.token_table()
    by_passage = tokens.dropna(subset=["passage"]).groupby("passage").ig.sum()
    torch.testing.assert_close(torch.tensor(by_passage.loc[[1, 2, 3, 4]].to_numpy()),
                               torch.tensor(result.table().ig_sum.to_numpy()))
    share = result.table().share
    torch.testing.assert_close(float(share.sum()), 1.0)
    assert (share >= 0).all()


def test_neuron_means_match_the_cached_activations(case) -> None:
    model, result = case
    prompt = prompt_for(model, EXAMPLE, "noisy", PROMPTS)
    _, cache = model.run_with_cache(torch.tensor([list(prompt.token_ids)]))
    assert result.neurons == ((0, 3), (1, 0), (1, 17), (1, 47))
    expected = torch.tensor([[float(cache[f"blocks.{layer}.mlp.hook_post"][0, a:b, index].mean())
                              for layer, index in result.neurons] for a, b in result.spans], dtype=torch.float64)
    assert_close_in_scale(result.neuron_means, expected, rel=1e-5)
    top = result.top_neurons(2)
    assert list(top.passage) == [1, 1, 2, 2, 3, 3, 4, 4] and list(top["rank"]) == [1, 2] * 4
    for i in range(4):
        best = expected[i].abs().argsort(descending=True)[:2].tolist()
        rows = top[top.passage == i + 1]
        assert [tuple(r) for r in rows[["layer", "neuron"]].to_numpy().tolist()] == [result.neurons[j] for j in best]


def test_json_round_trip(results, tmp_path: Path) -> None:
    result = results["llama"]
    loaded = PassageAttribution.load(result.save(tmp_path / "passages.json"))
    assert loaded.table().equals(result.table())
    torch.testing.assert_close(loaded.token_ig, result.token_ig.double())
    torch.testing.assert_close(loaded.neuron_means, result.neuron_means)
    assert (loaded.spans, loaded.question_span, loaded.neurons) == (result.spans, result.question_span, result.neurons)
    assert loaded.gap == result.gap
    data = json.loads((tmp_path / "passages.json").read_text())
    assert data["passages"][2]["relevant"] is True and data["relative_gap"] == result.relative_gap


def test_config_checks_and_a_set_of_another_shape(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="n_steps"):
        PassageConfig(n_steps=0)
    with pytest.raises(ConfigError, match="baseline"):
        PassageConfig(baseline="mean")
    assert PassageConfig.from_dict(PassageConfig(n_steps=8).to_dict()) == PassageConfig(n_steps=8)
    with pytest.raises(ConfigError, match="another model"):
        attribute_passages(tiny_llama, EXAMPLE, PROMPTS, PassageConfig(n_steps=2),
                           neurons=NeuronSet.empty(30, 1536, "bundled-sized"))


# ----------------------------------------------------------------------------------------------
# the view: bars and escaped heat


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.tags.add(tag)

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        self.text.append(data)


HOSTILE = RagExample(
    id="xss", question="Who wrote <i>Pride and Prejudice</i>?", answers=("Jane Austen",),
    passages=(Passage(text="Jane Austen wrote it. <script>alert(1)</script>", title="P&P", relevant=True),
              Passage(text="Bold claims: <b>x</b> & more", title="<b>Title</b>", relevant=False)),
)


def test_heat_html_shows_tags_in_passages_as_text(tiny_llama) -> None:
    result = attribute_passages(tiny_llama, HOSTILE, PromptConfig(n_distractors=1, relevant_position=0),
                                PassageConfig(n_steps=2))
    page = passages_view.token_heat_html(result)
    parsed = _Parsed()
    parsed.feed(page)
    assert parsed.tags <= {"div", "span"}  # no <script>, <b> or <i> element
    for raw in ("<script", "</script>", "<b>", "</b>", "<i>"):
        assert raw not in page
    text = "".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "<b>x</b> & more" in text and "(<b>Title</b>)" in text
    assert "Passage 1 (relevant)" in text and "Passage 2 (irrelevant)" in text


def test_bars_figure_has_both_measures_coloured_by_relevance(results) -> None:
    result = results["gpt2"]
    fig = passages_view.passage_bars_figure(result)
    bars = {(t.xaxis, t.name): t for t in fig.data}
    assert set(bars) == {("x", "relevant"), ("x", "irrelevant"), ("x2", "relevant"), ("x2", "irrelevant")}
    assert list(bars[("x", "relevant")].x) == ["P3"] and list(bars[("x", "irrelevant")].x) == ["P1", "P2", "P4"]
    assert list(bars[("x", "relevant")].y) == [result.loo[2]]
    torch.testing.assert_close(torch.tensor(list(bars[("x2", "irrelevant")].y), dtype=torch.float64),
                               result.passage_ig[[0, 1, 3]].to(torch.float64))
    assert bars[("x", "relevant")].marker.color == passages_view.RELEVANT_COLOR
    assert bars[("x2", "irrelevant")].marker.color == passages_view.IRRELEVANT_COLOR
    assert passages_view.gap_health(result).level == "ok"


# ----------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cli_prints_one_row_per_passage_and_the_gap(capsys, cache, tiny_llama, tiny_llama_dir, tmp_path) -> None:
    grid = torch.zeros(2, 48, dtype=torch.bool)
    grid[1, [0, 17]] = True
    mined = MinedNeurons(
        relevant=NeuronSet(torch.zeros(2, 48, dtype=torch.bool), "relevant"), irrelevant=NeuronSet(grid, "irrelevant"),
        relevant_frequency=torch.zeros(2, 48), irrelevant_frequency=grid.float(), relevant_mean=torch.zeros(2, 48),
        irrelevant_mean=grid.float(), example_ids=("demo-01",), model=model_identity(tiny_llama),
    )
    mined.save(tmp_path / "mined")
    out = ok(capsys, "passages", "--model", tiny_llama_dir, "--data", "demo", "--example", "demo-02", "--steps", STEPS,
             "--mined", tmp_path / "mined", "--quiet", "--json", tmp_path / "p.json")
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:5] == ["passage", "relevant", "loo_delta",
                                                                         "ig_sum", "share"])
    rows = [line.split() for line in lines[header + 1 : header + 6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert sorted(r[1] for r in rows) == ["False", "False", "False", "False", "True"]
    saved = PassageAttribution.load(tmp_path / "p.json")
    assert [f"{v:.4f}" for v in saved.loo] == [r[2] for r in rows]
    gap_line = next(line for line in lines if line.startswith("completeness:"))
    assert f"relative {saved.relative_gap:.2%}" in gap_line and saved.relative_gap < 0.01
    assert "top neurons of irrelevant-exclusive (2)" in out and saved.neurons == ((1, 0), (1, 17))


def test_cli_bad_example_id_exits_2_with_one_line(capsys, cache, tiny_llama_dir) -> None:
    line = reason(capsys, "passages", "--model", tiny_llama_dir, "--data", "demo", "--example", "no-such-id")
    assert "no example with id 'no-such-id'" in line and "demo-01" in line
    line = reason(capsys, "passages", "--model", tiny_llama_dir, "--data", "demo", "--example", "demo-01",
                  "--steps", "0")
    assert "n_steps" in line


def test_cli_help_lists_the_options(capsys) -> None:
    code, out, _ = run(capsys, "passages", "--help")
    assert code == 0
    for option in ("--data", "--example", "--mined", "--set", "--steps", "--json", "--model"):
        assert option in out


# ----------------------------------------------------------------------------------------------
# the Explore page's section


def test_explore_section_computes_on_the_button(app_env: Path) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "explore.py"), default_timeout=120).run()
    next(b for b in at.button if b.label.startswith("Run preview")).click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value == "Which passage drives the answer" for s in at.subheader)
    assert not at.get("html")  # nothing computed before the press
    n_frames = len(at.dataframe)
    at.number_input(key="w.explore.passages.n_steps").set_value(STEPS)
    at.selectbox(key="w.explore.passages.source").set_value("This example's sets (Explore)")
    at.run()
    next(b for b in at.button if b.label == "Compute passage attributions").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[n_frames].value
    assert list(table.passage) == [1, 2, 3, 4, 5] and table.relevant.sum() == 1
    assert {"loo_delta", "ig_sum", "share"} <= set(table.columns)
    assert any("Leave one out" in str(c.proto.spec) for c in at.get("plotly_chart"))
    heat = at.get("html")
    assert len(heat) == 1 and "Passage 1 (" in heat[0].proto.body
