"""Reading neurons through the unembedding: which neurons' output weights promote a token.

Owns: W_U ([d_vocab, d_model]: the output head, else the tied input embedding; the weight names
are sites.py's), a layer's output directions W_out ([d_mlp, d_model], row i = what neuron i adds
to the residual stream), the tokens a neuron promotes (`promoted_token_ids`, `promoted_tokens`:
the top of W_out[L][i] @ W_U^T) and the search from a token to the neurons that raise its logit
most directly (the top of W_out[L] @ W_U[t] over every layer). Both are a direct logit
attribution of the weights; the final norm's scale is not applied. Must not: run the model, or
import streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from neurorit import neurons
from neurorit.errors import ConfigError, ModelLoadError
from neurorit.models import hf_state_dict, neuron_site
from neurorit.neurons import Neuron
from neurorit.sites import TIED_EMBEDDING_SUFFIXES, UNEMBEDDING_WEIGHTS



def unembedding(model: Any, state: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """W_U as [d_vocab, d_model]: the output head, else the tied input embedding."""
    state = state if state is not None else hf_state_dict(model)
    d_model = int(model.cfg.d_model)
    for name in UNEMBEDDING_WEIGHTS:
        w = state.get(name)
        if w is not None and w.ndim == 2 and w.shape[1] == d_model:
            return w
    for name, w in state.items():
        if name.endswith(TIED_EMBEDDING_SUFFIXES) and w.ndim == 2 and w.shape[1] == d_model:
            return w
    raise ModelLoadError(
        f"cannot find the unembedding of {type(model).__name__}: expected one of {UNEMBEDDING_WEIGHTS} or a tied "
        f"embedding ending in {TIED_EMBEDDING_SUFFIXES} of width d_model={d_model}."
    )


def output_directions(model: Any, layer: int, state: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """W_out of one layer as [d_mlp, d_model]: row i is what neuron i adds to the residual stream."""
    state = state if state is not None else hf_state_dict(model)
    site = neuron_site(model)
    w = state[site.down_proj_name(layer)]
    return w if site.neuron_axis == 0 else w.T


def vocab_size(model: Any, w_u: torch.Tensor) -> int:
    """Rows of W_U that are real tokens (an embedding may be padded past the tokenizer's vocabulary)."""
    tokenizer = getattr(model, "tokenizer", None)
    return min(int(w_u.shape[0]), len(tokenizer)) if tokenizer is not None else int(w_u.shape[0])


def check_neuron(model: Any, layer: int, index: int) -> None:
    """ConfigError naming the model's ranges when (layer, index) is not one of its neurons."""
    neurons.check_neuron(layer, index, int(model.cfg.n_layers), int(model.cfg.d_mlp))


@torch.no_grad()
def promoted_token_ids(model: Any, neurons: Sequence[Neuron], k: int = 5) -> dict[Neuron, list[int]]:
    """For each neuron, the k token ids its output direction raises most: top-k of W_out[L][i] @ W_U^T."""
    if not neurons:
        return {}
    state = hf_state_dict(model)
    w_u = unembedding(model, state).float()  # [d_vocab, d_model]
    vocab = vocab_size(model, w_u)
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        check_neuron(model, layer, index)
        by_layer.setdefault(layer, []).append(index)
    out: dict[Neuron, list[int]] = {}
    for layer, indices in by_layer.items():
        rows = output_directions(model, layer, state)[indices].float().to(w_u.device)  # [n, d_model]
        top = (rows @ w_u[:vocab].T).topk(min(k, vocab), dim=-1).indices.cpu().tolist()  # [n, k]
        for index, ids in zip(indices, top):
            out[(layer, index)] = [int(t) for t in ids]
    return out


def promoted_tokens(model: Any, neurons: Sequence[Neuron], k: int = 5) -> dict[Neuron, list[str]]:
    """promoted_token_ids decoded to readable strings (quoted, so spaces show)."""
    ids = promoted_token_ids(model, neurons, k)
    tokenizer = model.tokenizer
    return {n: [repr(tokenizer.decode([t])) for t in ts] for n, ts in ids.items()}


def unquote(text: str) -> str:
    """A token typed with quotes (' Sydney' or \" Sydney\", as the tables print them) -> its text."""
    text = str(text)
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return stripped[1:-1]
    return text


@dataclass(frozen=True)
class TokenReadout:
    """The neurons whose output weights raise one token's logit most, strongest first.

    text: the text searched for; token_id / token: the token used (the text's first token);
    n_tokens: how many tokens the text is (> 1: only the first one was searched);
    neurons and weights: (layer, index) and W_out[layer][index] . W_U[token_id], descending.
    """

    text: str
    token_id: int
    token: str
    n_tokens: int
    neurons: tuple[Neuron, ...]
    weights: tuple[float, ...]


def _token_ids(model: Any, text: str) -> list[int]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ModelLoadError("the model has no tokenizer: search by token needs one.")
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]


@torch.no_grad()
def token_logit_weights(model: Any, token_id: int) -> torch.Tensor:
    """W_out[L] @ W_U[token_id] for every layer: float32 [n_layers, d_mlp] on the CPU."""
    state = hf_state_dict(model)
    w_u = unembedding(model, state)
    if not 0 <= int(token_id) < int(w_u.shape[0]):
        raise ConfigError(f"token id {token_id} is outside the vocabulary 0-{int(w_u.shape[0]) - 1}.")
    column = w_u[int(token_id)].float()  # [d_model]
    rows = [output_directions(model, layer, state).float().to(column.device) @ column  # [d_mlp]
            for layer in range(int(model.cfg.n_layers))]
    return torch.stack(rows).cpu()  # [n_layers, d_mlp]


def neurons_promoting(model: Any, token: str | int, k: int = 20) -> TokenReadout:
    """The k neurons whose output weights raise this token's logit most (W_out . W_U, descending).

    `token` is a text (quotes around it are dropped, spaces inside kept: ' Sydney' is the token
    with a leading space) or a token id. A text of several tokens is searched by its first.
    """
    if k < 1:
        raise ConfigError(f"k = {k}: expected at least 1 neuron.")
    if isinstance(token, int):
        ids, text = [int(token)], ""
    else:
        text = unquote(token)
        if not text.strip():
            raise ConfigError("no token given: type a word such as ' Sydney' (with its leading space), or layer:index.")
        ids = _token_ids(model, text)
        if not ids:
            raise ConfigError(f"{token!r} tokenizes to nothing; type a word.")
    weights = token_logit_weights(model, ids[0])  # [n_layers, d_mlp]
    d_mlp = int(weights.shape[1])
    top = weights.reshape(-1).topk(min(int(k), weights.numel()))
    neurons = tuple((int(i) // d_mlp, int(i) % d_mlp) for i in top.indices.tolist())
    tokenizer = getattr(model, "tokenizer", None)
    decoded = tokenizer.decode([ids[0]]) if tokenizer is not None else str(ids[0])
    return TokenReadout(text=text or decoded, token_id=ids[0], token=decoded, n_tokens=len(ids),
                        neurons=neurons, weights=tuple(float(v) for v in top.values.tolist()))
