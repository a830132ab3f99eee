"""The activation index against direct hook reads, brute force and exact statistics, on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_harness import ok, reason
from neurorit import store
from neurorit.activations import (
    INDEX_JSON, INDEX_TENSORS, REGIONS, STAT_REGIONS, ActivationIndex, bin_edges, build_index, bytes_per_neuron,
    extend_index, find_indexes, histogram_quantiles, index_dir, load_index, neuron_activations_over_prompt,
)
from neurorit.data import demo_examples
from neurorit.errors import ArtifactError, ConfigError, DataError, ModelMismatchError
from neurorit.models import load_model, neuron_site
from neurorit.prompts import PromptConfig, build_prompt, passage_spans
from scale import assert_close_in_scale

VIEWS = ("relevant", "noisy", "irrelevant", "closed_book")
# short prompts (fast on the tiny models); the noisy view opens with the passage the relevant view shows
CONFIG = PromptConfig(n_distractors=2, max_passage_tokens=40, relevant_position=0)


@pytest.fixture(scope="module")
def examples():
    demo = demo_examples()[:3]
    lonely = demo_examples()[3]
    lonely = lonely.with_passages(lonely.relevant_passages)  # no irrelevant passage: no irrelevant view
    return [*demo, lonely]


def _prompt(model, example, view):
    return build_prompt(example, view, CONFIG, model.tokenizer, max_tokens=int(model.cfg.n_ctx))


def _direct_acts(model, token_ids) -> torch.Tensor:
    """Every neuron at every position of one prompt, through hooks on a plain full forward: [pos, L, D]."""
    site = neuron_site(model)
    got = {}

    def make(layer):
        def hook(x, hook):
            got[layer] = x[0].detach().float().clone()
            return x

        return hook

    n_layers = int(model.cfg.n_layers)
    with torch.no_grad(), model.hooks(fwd_hooks=[(site.hook_name(l), make(l)) for l in range(n_layers)]):
        model(torch.tensor([list(token_ids)]))
    return torch.stack([got[l] for l in range(n_layers)], dim=1)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def built(request, tiny_llama, tiny_gpt2, examples):
    model = tiny_llama if request.param == "llama" else tiny_gpt2
    index = build_index(model, examples, views=VIEWS, prompt_config=CONFIG, top_k=5, window=3, use_cache=False)
    direct = {}  # (row, view index) -> [pos, L*D] from a separate plain forward
    for row, example in enumerate(examples):
        for v, view in enumerate(VIEWS):
            try:
                prompt = _prompt(model, example, view)
            except DataError:
                continue
            direct[row, v] = (prompt, _direct_acts(model, prompt.token_ids).reshape(prompt.n_tokens, -1))
    return model, index, direct


def test_last_token_activations_equal_direct_hook_reads(built):
    model, index, direct = built
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    assert index.last_token.shape == (4, 4, n_layers, d_mlp) and index.last_token.dtype == torch.float32
    for (row, v), (prompt, acts) in direct.items():
        assert torch.equal(index.last_token[row, v], acts[-1].view(n_layers, d_mlp))
    missing = [(3, VIEWS.index("irrelevant"))]
    assert set(direct) == {(r, v) for r in range(4) for v in range(4)} - set(missing)
    for row, v in missing:
        assert torch.isnan(index.last_token[row, v]).all()
        assert index.prompt(row, VIEWS[v]) is None
    assert [(s["example_id"], s["view"]) for s in index.provenance["skipped"]] == [(index.example_ids[3], "irrelevant")]


def test_recorded_prompts_and_regions_follow_the_prompt_builder(built):
    model, index, direct = built
    for (row, v), (prompt, _) in direct.items():
        shown = index.prompt(row, VIEWS[v])
        assert shown.token_ids == prompt.token_ids
        spans = passage_spans(prompt, model.tokenizer)
        want = ["other"] * prompt.n_tokens
        numbers = [0] * prompt.n_tokens
        for i, ((lo, hi), passage) in enumerate(zip(spans.passages, prompt.passages), start=1):
            want[lo:hi] = ["relevant" if passage.relevant else "irrelevant"] * (hi - lo)
            numbers[lo:hi] = [i] * (hi - lo)
        lo, hi = spans.question
        want[lo:hi] = ["question"] * (hi - lo)
        assert shown.regions == tuple(want) and shown.passages == tuple(numbers)
        assert "question" in shown.regions
        # the search starts at the first passage / question token, or after what an earlier view shared
        earlier = [direct[row, u][0].token_ids for u in range(v) if (row, u) in direct]
        shared = max([next((n for n, (a, b) in enumerate(zip(prompt.token_ids, e)) if a != b), min(len(e), prompt.n_tokens))
                      for e in earlier] or [0])
        first = min([lo for lo, _ in spans.passages] + [spans.question[0]])
        assert shown.top_start == min(max(first, shared), prompt.n_tokens - 1)
    for row in range(3):  # the noisy view's copy of the relevant view's opening is not searched again
        noisy = index.prompt(row, "noisy")
        last_relevant = max(t for t, r in enumerate(noisy.regions) if r == "relevant")
        assert noisy.passages[last_relevant] == 1 and noisy.top_start > last_relevant


def test_streaming_top_k_equals_a_brute_force_sort(built):
    model, index, direct = built
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    values, where = [], []
    for (row, v), (prompt, acts) in direct.items():
        start = int(index.top_start[row, v])
        values.append(acts[start:])  # [pos - start, M]
        where += [(row, v, p) for p in range(start, prompt.n_tokens)]
    every = torch.cat(values)  # [all positions, M]
    brute = every.sort(dim=0, descending=True).values[: index.top_k].T.reshape(n_layers, d_mlp, -1)
    assert torch.equal(index.top_values, brute)
    w = index.window
    for layer in range(n_layers):
        for i in range(d_mlp):
            hits = index.top_hits(layer, i)
            assert len(hits) == index.top_k
            for hit in hits:  # each hit is a real activation, with its token and its window
                prompt, acts = direct[hit.row, VIEWS.index(hit.view)]
                n = layer * d_mlp + i
                assert float(acts[hit.position, n]) == hit.value
                assert hit.token_id == prompt.token_ids[hit.position]
                assert hit.position >= int(index.top_start[hit.row, VIEWS.index(hit.view)])
                lo, hi = max(0, hit.position - w), min(prompt.n_tokens, hit.position + w + 1)
                assert hit.window_token_ids == prompt.token_ids[lo:hi] and hit.center == hit.position - lo
                assert torch.equal(torch.tensor(hit.window_values), acts[lo:hi, n].half().float())
            raw = index.top_window[layer, i]  # [top_k, 2w+1]: NaN beyond the prompt's ends
            for k, hit in enumerate(hits):
                pad_left = w - (hit.position - max(0, hit.position - w))
                assert torch.isnan(raw[k, :pad_left]).all()
                assert not torch.isnan(raw[k, pad_left : pad_left + len(hit.window_values)]).any()
    assert len({(h.row, h.view, h.position) for h in index.top_hits(0, 0)}) == index.top_k


def test_top_k_larger_than_the_data_leaves_empty_slots(tiny_llama, examples):
    index = build_index(tiny_llama, examples[:1], views=("closed_book",), prompt_config=CONFIG, top_k=200,
                        window=1, use_cache=False)
    n = index.prompt_length[0, 0] - index.top_start[0, 0]
    assert int((index.top_example[0, 0] >= 0).sum()) == int(n) and len(index.top_hits(0, 0)) == int(n)
    assert torch.isinf(index.top_values[0, 0, int(n):]).all()


def test_region_stats_match_a_direct_computation(built):
    model, index, direct = built
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    per_region = {r: [] for r in STAT_REGIONS}
    for (row, v), (prompt, acts) in direct.items():
        codes = torch.tensor([REGIONS.index(r) for r in index.prompt(row, VIEWS[v]).regions])
        for r in STAT_REGIONS:
            per_region[r].append(acts[codes == REGIONS.index(r)])
    edges = bin_edges(index.n_bins)
    for r, region in enumerate(STAT_REGIONS):
        x = torch.cat(per_region[region]).double()  # [tokens, M]
        assert int(index.region_count[r]) == x.shape[0] > 0
        assert_close_in_scale(index.region_sum[r].reshape(-1), x.sum(0), rel=1e-9)
        assert torch.equal(index.region_hist[r].sum(-1), torch.full((n_layers, d_mlp), x.shape[0], dtype=torch.int64))
        ordered = x.sort(dim=0).values
        for layer in range(n_layers):
            for i in range(0, d_mlp, 7):
                stats = index.region_stats(layer, i)[r]
                column = ordered[:, layer * d_mlp + i]
                assert stats.region == region and stats.n_tokens == x.shape[0]
                assert stats.mean == pytest.approx(float(column.mean()), rel=1e-9, abs=1e-12)
                for q, got in zip((0.1, 0.5, 0.9), (stats.q10, stats.q50, stats.q90)):
                    n = column.numel()
                    lo = float(column[max(int(np.floor(q * n)) - 1, 0)])
                    hi = float(column[min(int(np.ceil(q * n)), n - 1)])
                    b = int(torch.searchsorted(edges, torch.tensor([got], dtype=torch.float64)).clamp(1, len(edges) - 1)) - 1
                    width = float(edges[b + 1] - edges[b])
                    assert lo - width <= got <= hi + width, (region, layer, i, q, got, lo, hi, width)
                    assert width <= stats.quantile_error + 1e-12


def test_histogram_quantiles_on_a_known_sample():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 20000), rng.normal(5, 0.1, 5000), [250.0, -300.0]])
    edges = bin_edges(256).numpy()
    counts, _ = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)  # an independent binning
    (q10, q50, q90), error = histogram_quantiles(torch.from_numpy(counts))
    for q, got in zip((0.1, 0.5, 0.9), (q10, q50, q90)):
        want = float(np.quantile(x, q))
        assert abs(got - want) <= error, (q, got, want, error)
    assert error <= 0.081 * max(abs(q10), abs(q50), abs(q90))  # a bin is ~8 % of |x| away from 0
    edge_counts = torch.zeros(256, dtype=torch.int64)
    edge_counts[-1] = 3  # values beyond +100 read as the edge of the histogram
    assert histogram_quantiles(edge_counts)[0][1] == pytest.approx(100.0, rel=0.08)
    assert all(np.isnan(v) for v in histogram_quantiles(torch.zeros(256, dtype=torch.int64))[0])


def _assert_same_index(a: ActivationIndex, b: ActivationIndex) -> None:
    for name in ("last_token", "top_values", "top_window", "region_sum"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True)
    for name in ("top_example", "top_view", "top_position", "top_token", "region_count", "region_hist",
                 "prompt_tokens", "prompt_regions", "prompt_passages", "prompt_offset", "prompt_length", "top_start"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.example_ids, a.example_hashes, a.views, a.key()) == (b.example_ids, b.example_hashes, b.views, b.key())


def test_extending_an_index_equals_building_it_at_once(tiny_llama, examples):
    at_once = build_index(tiny_llama, examples, views=VIEWS, prompt_config=CONFIG, top_k=4, window=2, use_cache=False)
    first = build_index(tiny_llama, examples[:2], views=VIEWS, prompt_config=CONFIG, top_k=4, window=2, use_cache=False)
    progress = []
    extended = extend_index(first, tiny_llama, examples[1:], use_cache=False,
                            on_progress=lambda d, t, m: progress.append((d, t)))
    _assert_same_index(extended, at_once)
    assert progress[-1] == (2 * len(VIEWS), 2 * len(VIEWS))  # example 1 was already there: skipped
    assert extend_index(extended, tiny_llama, examples[:2], use_cache=False) is extended
    changed = examples[0].__class__.from_dict({**examples[0].to_dict(), "question": "Something else?"})
    with pytest.raises(DataError, match=f"example {examples[0].id} is in the activation index with other content"):
        extend_index(first, tiny_llama, [changed], use_cache=False)


def test_save_load_round_trip_and_bytes_per_neuron(built, tmp_path):
    model, index, _ = built
    folder = index.save(tmp_path / "index")
    loaded = load_index(folder, model)
    _assert_same_index(loaded, index)
    assert loaded.model == index.model and loaded.prompt_config == CONFIG.to_dict()
    n_neurons = int(model.cfg.n_layers) * int(model.cfg.d_mlp)
    per_neuron = bytes_per_neuron(index.n_examples, len(index.views), index.top_k, index.window, index.n_bins)
    assert loaded.bytes_per_neuron() == per_neuron == index.to_json()["bytes_per_neuron"]
    assert per_neuron == 4 * 4 * 4 + 5 * 17 + 5 * 7 * 2 + 3 * 8 + 3 * 256 * 4
    tokens = int(index.prompt_length.sum())
    assert (folder / INDEX_TENSORS).stat().st_size >= per_neuron * n_neurons + 7 * tokens


def test_broken_or_foreign_artifacts_are_refused_clearly(built, tiny_llama, tiny_gpt2, tmp_path):
    model, index, _ = built
    folder = index.save(tmp_path / "index")
    other = tiny_gpt2 if model is tiny_llama else tiny_llama
    with pytest.raises(ModelMismatchError) as err:
        load_index(folder, other)
    assert index.model.fingerprint in str(err.value) and "the model is" in str(err.value)
    meta = json.loads((folder / INDEX_JSON).read_text())
    store.write_json(folder / INDEX_JSON, {**meta, "format_version": 99})
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_index(folder)
    store.write_json(folder / INDEX_JSON, {**meta, "top_k": 6})
    with pytest.raises(ArtifactError, match="top_values has shape"):
        load_index(folder)
    (folder / INDEX_JSON).unlink()
    with pytest.raises(ArtifactError, match="index.json is missing"):
        load_index(folder)


def test_a_neuron_out_of_range_is_one_clear_config_error(built):
    model, index, _ = built
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    for layer, i in ((n_layers, 0), (0, d_mlp), (-1, 0)):
        with pytest.raises(ConfigError) as err:
            index.top_hits(layer, i)
        assert f"neuron {layer}:{i} is outside" in str(err.value)
        assert f"layers 0-{n_layers - 1} and neurons 0-{d_mlp - 1}" in str(err.value)
    with pytest.raises(ConfigError, match="outside the model"):
        neuron_activations_over_prompt(model, demo_examples()[0], "noisy", n_layers, 0, CONFIG)
    with pytest.raises(ConfigError, match="views"):
        build_index(model, demo_examples()[:1], views=("noisy", "bogus"), use_cache=False)


def test_one_neuron_over_one_prompt(built, examples):
    model, index, direct = built
    for layer in range(int(model.cfg.n_layers)):
        trace = neuron_activations_over_prompt(model, examples[1], "noisy", layer, 5, CONFIG)
        prompt, acts = direct[1, VIEWS.index("noisy")]
        assert trace.token_ids == prompt.token_ids
        assert torch.equal(trace.values, acts[:, layer * int(model.cfg.d_mlp) + 5])
        assert float(trace.values[-1]) == float(index.last_token[1, VIEWS.index("noisy"), layer, 5])
        assert trace.regions == index.prompt(1, "noisy").regions and trace.passages == index.prompt(1, "noisy").passages


def test_bf16_model_records_float32(tiny_llama_dir, examples):
    model = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    index = build_index(model, examples[:1], views=("relevant",), prompt_config=CONFIG, top_k=2, window=1,
                        use_cache=False)
    prompt = _prompt(model, examples[0], "relevant")
    assert index.last_token.dtype == torch.float32 and index.provenance["dtype"] == "bfloat16"
    assert torch.equal(index.last_token[0, 0].reshape(-1), _direct_acts(model, prompt.token_ids)[-1].reshape(-1))


def test_the_cache_keys_the_index_by_model_data_and_settings(tiny_llama, tiny_gpt2, examples, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    index = build_index(tiny_llama, examples[:2], views=("relevant", "closed_book"), prompt_config=CONFIG, top_k=3,
                        window=1)
    folder = index_dir(index)
    assert (folder / INDEX_JSON).is_file() and find_indexes(tiny_llama) == [folder] and find_indexes(tiny_gpt2) == []
    again = build_index(tiny_llama, examples[:2], views=("relevant", "closed_book"), prompt_config=CONFIG, top_k=3,
                        window=1, on_progress=lambda *a: pytest.fail("a cached index must not run the model"))
    _assert_same_index(again, index)
    other = build_index(tiny_llama, examples[:2], views=("relevant", "closed_book"), prompt_config=CONFIG, top_k=4,
                        window=1)
    assert index_dir(other) != folder
    more = extend_index(index, tiny_llama, examples[2:3])
    assert (index_dir(more) / INDEX_JSON).is_file() and more.example_ids == tuple(e.id for e in examples[:3])
    assert find_indexes(tiny_llama)[0] in (folder, index_dir(more)) and len(find_indexes(tiny_llama)) == 3


def test_cli_index_builds_prints_and_submits(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    out = ok(capsys, "index", "--model", tiny_llama_dir, "--device", "cpu", "--data", "demo", "--limit", "2",
             "--views", "relevant,closed_book", "--top-k", "3", "--window", "2", "--quiet")
    assert "activation index of 2 examples x 2 views" in out and "bytes per neuron" in out
    folder = Path(out.strip().splitlines()[-1].split("index: ", 1)[1])
    index = load_index(folder)
    assert index.views == ("relevant", "closed_book") and index.top_k == 3 and index.n_examples == 2
    assert f"{index.bytes_per_neuron()} bytes per neuron" in out
    assert "views" in reason(capsys, "index", "--model", tiny_llama_dir, "--views", "relevant,bogus")
    assert "top_k" in reason(capsys, "submit", "index", "--model", tiny_llama_dir, "--top-k", "0")
