"""Neuron-set algebra laws and the selection rules, on hand-made grids."""

import pytest
import torch

from neurorit.errors import ConfigError, ModelMismatchError
from neurorit.neurons import NeuronSet, SelectionRule, select_example, select_neurons, selection_frequency


def _random_set(seed: int) -> NeuronSet:
    g = torch.Generator().manual_seed(seed)
    return NeuronSet(torch.rand(3, 11, generator=g) > 0.6)


@pytest.mark.parametrize("seed", range(5))
def test_set_algebra_laws(seed):
    a, b, c = _random_set(seed), _random_set(seed + 10), _random_set(seed + 20)
    assert a | b == b | a and a & b == b & a
    assert (a | b) | c == a | (b | c)
    assert a & (b | c) == (a & b) | (a & c)
    assert (a - b) | (a & b) == a
    assert len((a - b) & b) == 0
    assert len(a | b) == len(a - b) + len(b - a) + len(a & b)


def test_exclusive_and_shared_partition_the_union():
    r = NeuronSet.from_neurons([(0, 1), (0, 2), (1, 3)], 2, 5)
    i = NeuronSet.from_neurons([(0, 2), (1, 4)], 2, 5)
    assert (i - r).neurons() == [(1, 4)]
    assert (r - i).neurons() == [(0, 1), (1, 3)]
    assert (r & i).neurons() == [(0, 2)]
    assert (r | i).counts_per_layer() == [2, 2]


def test_sets_of_different_models_do_not_mix():
    with pytest.raises(ModelMismatchError, match="different shapes"):
        NeuronSet.empty(2, 5) | NeuronSet.empty(3, 5)
    with pytest.raises(ConfigError, match="outside the model: it has layers 0-1 and neurons 0-4"):
        NeuronSet.from_neurons([(2, 0)], 2, 5)


def test_relative_threshold_and_top_k():
    scores = torch.tensor([[1.0, 0.5, 0.1], [-2.0, 0.25, 0.19]])
    rel = select_example(scores, SelectionRule(threshold=0.2))
    assert rel.tolist() == [[True, True, False], [False, True, False]]
    top = select_example(scores, SelectionRule(mode="top_k", top_k=2))
    assert top.tolist() == [[True, True, False], [False, False, False]]
    absolute = select_example(scores, SelectionRule(mode="top_k", top_k=1, use_abs=True))
    assert absolute.tolist() == [[False, False, False], [True, False, False]]


def test_support_fraction_aggregates_examples():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    half = select_neurons([a, b, c], SelectionRule(support=0.5))
    assert half.neurons() == [(0, 0), (1, 1)]
    everyone = select_neurons([a, b, c], SelectionRule(support=1.0))
    assert len(everyone) == 0


def test_rule_validation():
    with pytest.raises(ConfigError, match="support"):
        SelectionRule(support=0.0)
    with pytest.raises(ConfigError, match="mode"):
        SelectionRule(mode="bottom")


def test_layer_scope_thresholds_each_layer_on_its_own():
    scores = torch.tensor([[100.0, 30.0, 1.0], [2.0, 1.0, 0.1]])
    whole = select_example(scores, SelectionRule(threshold=0.2))
    assert whole.tolist() == [[True, True, False], [False, False, False]]
    per_layer = select_example(scores, SelectionRule(threshold=0.2, scope="layer"))
    assert per_layer.tolist() == [[True, True, False], [True, True, False]]
    top1 = select_example(scores, SelectionRule(mode="top_k", top_k=1, scope="layer"))
    assert top1.tolist() == [[True, False, False], [True, False, False]]


@pytest.mark.parametrize("mode", ["relative", "count"])
def test_max_per_layer_keeps_the_most_often_selected_of_each_layer(mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    grids = [torch.randn(4, 40, generator=g) for _ in range(6)]
    base = SelectionRule(mode=mode, threshold=0.3, support=0.3, per_example=30, keep=60)
    capped = SelectionRule(mode=mode, threshold=0.3, support=0.3, per_example=30, keep=60, max_per_layer=3)
    whole, cut = select_neurons(grids, base).grid, select_neurons(grids, capped).grid
    freq = selection_frequency(grids, base)
    mean = torch.stack(grids).mean(dim=0)
    for layer in range(4):  # brute force: sort the layer's kept neurons by (-frequency, -mean score, index)
        kept = [i for i in range(40) if whole[layer, i]]
        best = sorted(kept, key=lambda i: (-float(freq[layer, i]), -float(mean[layer, i]), i))[:3]
        assert sorted(best) == [i for i in range(40) if cut[layer, i]]
    assert int(whole.sum(dim=1).max()) > 3  # the cap did bind
    assert SelectionRule(max_per_layer=None).to_dict() == SelectionRule().to_dict()  # no cache key changed
    with pytest.raises(ConfigError, match="max_per_layer"):
        SelectionRule(max_per_layer=0)
