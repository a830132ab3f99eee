"""Dataset mining on a tiny model: caching, set relations, skipped examples, round trips."""

import pytest
import torch

from neurorit.attribution import AttributionConfig
from neurorit.data import Passage, RagExample, demo_examples
from neurorit.errors import DataError
from neurorit.mining import MinedNeurons, mine, mined_dir, score_example
from neurorit.neurons import SelectionRule
from neurorit.prompts import PromptConfig


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_mine_builds_consistent_sets_and_caches(tiny_llama, isolated_cache):
    examples = demo_examples()[:3]
    config = AttributionConfig(n_steps=4)
    prompts = PromptConfig(n_distractors=2)
    calls = []
    mined = mine(tiny_llama, examples, config, SelectionRule(support=0.5), prompts,
                 on_progress=lambda d, t, m: calls.append((d, t)))
    assert calls[-1] == (3, 3)
    assert mined.irrelevant_exclusive == mined.irrelevant - mined.relevant
    assert len(mined.relevant_exclusive) + len(mined.shared) == len(mined.relevant)
    assert mined.example_ids == tuple(e.id for e in examples)
    assert (isolated_cache / "scores").is_dir() and len(list((isolated_cache / "scores").iterdir())) == 6
    # a rerun reads the cache: same result, no new score folders
    again = mine(tiny_llama, examples, config, SelectionRule(support=0.5), prompts)
    assert again.relevant == mined.relevant and again.irrelevant == mined.irrelevant
    loaded = MinedNeurons.load(mined_dir(mined), tiny_llama)
    assert loaded.irrelevant_exclusive == mined.irrelevant_exclusive
    torch.testing.assert_close(loaded.relevant_frequency, mined.relevant_frequency)


def test_cached_scores_equal_fresh_scores(tiny_llama, isolated_cache):
    example = demo_examples()[0]
    config, prompts = AttributionConfig(n_steps=3), PromptConfig(n_distractors=1)
    fresh = score_example(tiny_llama, example, "irrelevant", config, prompts, use_cache=False)
    score_example(tiny_llama, example, "irrelevant", config, prompts)
    cached = score_example(tiny_llama, example, "irrelevant", config, prompts)
    torch.testing.assert_close(cached.scores, fresh.scores)
    assert cached.example_id == example.id and cached.view == "irrelevant"


def test_examples_without_a_view_are_skipped_and_all_missing_is_an_error(tiny_llama, isolated_cache):
    good = demo_examples()[0]
    only_relevant = RagExample(id="x1", question="Who?", answers=("Ann",), passages=(Passage("Ann did it.", relevant=True),))
    mined = mine(tiny_llama, [good, only_relevant], AttributionConfig(n_steps=2), SelectionRule(), PromptConfig(n_distractors=1))
    assert mined.provenance["skipped"] == ["x1"]
    with pytest.raises(DataError, match="none of the 1 examples"):
        mine(tiny_llama, [only_relevant], AttributionConfig(n_steps=2), SelectionRule(), PromptConfig())
    with pytest.raises(DataError, match="no examples"):
        mine(tiny_llama, [], AttributionConfig(), SelectionRule(), PromptConfig())


def test_a_broken_cached_score_is_recomputed(tiny_llama, isolated_cache):
    example = demo_examples()[0]
    config, prompts = AttributionConfig(n_steps=2), PromptConfig(n_distractors=1)
    first = score_example(tiny_llama, example, "relevant", config, prompts)
    (folder,) = list((isolated_cache / "scores").iterdir())
    (folder / "scores.safetensors").write_bytes(b"truncated")
    again = score_example(tiny_llama, example, "relevant", config, prompts)
    torch.testing.assert_close(again.scores, first.scores)
    from neurorit.attribution import NeuronScores

    torch.testing.assert_close(NeuronScores.load(folder).scores, first.scores)  # rewritten whole


def test_mined_sets_and_scores_carry_a_format_version(tiny_llama, tmp_path, isolated_cache):
    """Both artifacts write format_version 1; one written before versions existed still loads; another
    version is one clear ArtifactError."""
    import json

    from neurorit.attribution import AttributionConfig, NeuronScores, attribute_neurons
    from neurorit.errors import ArtifactError

    ids = tiny_llama.tokenizer.encode("Question: is grass green? Answer:")
    scores = attribute_neurons(tiny_llama, ids, tiny_llama.tokenizer.encode(" yes"), AttributionConfig(n_steps=2, baseline="zero"))
    folder = scores.save(tmp_path / "scores")
    meta = json.loads((folder / "scores.json").read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "neuron_scores"
    del meta["format_version"]
    (folder / "scores.json").write_text(json.dumps(meta))
    assert torch.equal(NeuronScores.load(folder).scores, scores.scores)  # an older artifact: version 1
    (folder / "scores.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(ArtifactError, match="format_version 2, this neurorit reads 1"):
        NeuronScores.load(folder)

    mined = mine(tiny_llama, demo_examples()[:2], AttributionConfig(n_steps=2), SelectionRule(), PromptConfig(n_distractors=1))
    path = mined_dir(mined) / "mined.json"
    meta = json.loads(path.read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "mined_neurons"
    path.write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(ArtifactError, match="format_version 7"):
        MinedNeurons.load(mined_dir(mined))
