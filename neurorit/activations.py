"""The activation index: what every MLP neuron does on a dataset's prompts, recorded once.

Owns: `build_index` and `extend_index` (one forward per example and view, every layer's neurons
read at their site), `ActivationIndex` (the recorded values, read per neuron, saved as the artifact
`cache/activations/<key>/` = index.safetensors + index.json), `neuron_activations_over_prompt`
(one neuron over one prompt: one forward that stops after its layer) and `bytes_per_neuron`.
Must not: spell hook names (sites.py), know neuron sets, masks or the unembedding (neuron_card.py
reads those), or draw.

What is recorded, for every neuron (layer, index):
- last token: its activation at the last prompt token, float32 [n_examples, n_views]; NaN where
  the example has no prompt in that view (no relevant / irrelevant passage, or over the context).
- top hits: its `top_k` largest activations over the prompt tokens of every example and view,
  each with (example row, view, position, token id). A streaming top-k: each prompt's own top_k
  per neuron is merged into the running top_k by torch.topk over the concatenation, so memory is
  [n_neurons, top_k] whatever the number of prompts (neurons whose best value in a prompt does not
  beat their running k-th value are left as they are: the merge could not change them). Searched
  from the prompt's first passage (or question) token on: the tokens before it (system prompt,
  instruction) are the same in every prompt of a view, and would fill the top_k with copies of
  one context. For the same reason a view skips the positions whose tokens so far equal an
  earlier view's of the same example (the noisy view opening with the passage the relevant view
  shows): their activations are the same numbers. `top_start` records where each prompt's search began.
  For each hit, the neuron's activations over the +-`window` tokens around it (float16; NaN beyond
  the prompt's ends). Their tokens are not stored again: the index keeps each prompt's token ids
  and per-token regions once per (example, view), and a hit's window tokens are read from there,
  so a card colours a context without a forward pass.
- regions: the float64 sum and a histogram of its activations on the tokens of relevant passages,
  of irrelevant passages and of the question (over every view; a token is in a region when it lies
  on the passage's line "Passage i (title): text" or on the "Question: ..." line, see
  prompts.passage_spans). The mean is exact; the quantiles 0.1 / 0.5 / 0.9 are read from the
  histogram. Exact quantiles would need every activation kept: 200 NQ examples x 3 views hold
  about 140k prompt tokens (711 an example on the first two), x 46,080 neurons x 2 bytes = 13 GB
  on the bundled model, against 142 MB for the histograms. The histogram
  has `n_bins` fixed bins (256 by default), uniform in asinh(x / 0.01) over |x| <= 100: each bin is
  0.0774 wide on that scale, about 8 % of |x| for |x| >= 0.1 and under 0.0008 around 0. A quantile
  read from it (linear inside its bin) is within one bin width of the sample's quantile (bins are
  computed in float32: a value within rounding of an edge may count in the bin beside it); values
  beyond +-100 are counted in the edge bins (a quantile there reads as +-100; the mean stays exact).
  Fixed bins make histograms of separate runs add up exactly, so extending an index equals
  building it at once.

Bytes per neuron (`bytes_per_neuron`, computed from this layout and checked against a saved index
by the tests): 4 * n_examples * n_views (last token) + top_k * 17 (value float32, example int32,
view uint8, position int32, token id int32) + top_k * (2 * window + 1) * 2 (window, float16) +
3 * 8 (region sums) + 3 * n_bins * 4 (histograms, int32). The bundled model (30 x 1536 = 46,080
neurons), 200 examples x 3 views, top_k 20, window 8, 256 bins: 2400 + 340 + 680 + 24 + 3072 =
6516 bytes a neuron, 300 MB (286 MiB) in all, plus 7 bytes per prompt token (token id int32, region
int8, passage int16).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from neurorit import store
from neurorit.configs import stable_hash
from neurorit.data import RagExample, require_unique_ids
from neurorit.errors import ArtifactError, ConfigError, DataError, ModelMismatchError
from neurorit.models import ModelIdentity, model_identity, neuron_site
from neurorit.neurons import check_neuron
from neurorit.prompts import VIEWS, Prompt, PromptConfig, build_prompt, passage_spans
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_KIND = "activations"
INDEX_TENSORS = "index.safetensors"
INDEX_JSON = "index.json"
DEFAULT_VIEWS = ("relevant", "noisy", "irrelevant", "closed_book")
REGIONS = ("other", "question", "relevant", "irrelevant")
"""Per-token labels (stored as their position in this tuple): template / instruction, question, passages."""
STAT_REGIONS = ("relevant", "irrelevant", "question")
"""The regions whose activations are summed and histogrammed, in the order of the region tensors."""
QUANTILES = (0.1, 0.5, 0.9)
TOP_K = 20
WINDOW = 8
N_BINS = 256
BIN_SCALE = 0.01  # asinh(x / BIN_SCALE): linear below ~0.01, logarithmic above
BIN_LIMIT = 100.0  # |x| beyond it lands in the edge bins
_HIT_BYTES = 4 + 4 + 1 + 4 + 4  # value, example row, view, position, token id


# ----------------------------------------------------------------------------------------------
# Values read from an index


@dataclass(frozen=True)
class TopHit:
    """One of a neuron's top activations, with the tokens and activations around it.

    window_*: the +-window tokens around the hit that lie inside the prompt; `center` is the
    hit's place in them. regions: REGIONS names; passages: 1-based passage number, 0 outside any.
    """

    rank: int  # 0 = the strongest
    value: float
    row: int  # the example's row in the index
    example_id: str
    view: str
    position: int  # of the hit in the prompt's tokens
    token_id: int
    region: str
    passage: int
    window_start: int  # prompt position of the window's first token
    center: int
    window_token_ids: tuple[int, ...]
    window_values: tuple[float, ...]
    window_regions: tuple[str, ...]
    window_passages: tuple[int, ...]


@dataclass(frozen=True)
class RegionStats:
    """A neuron's activations on the tokens of one region: exact mean, quantiles from the histogram.

    quantile_error: the widest histogram bin the quantiles were read from (each is within it).
    Quantiles are NaN when the region had no token.
    """

    region: str
    n_tokens: int
    mean: float
    q10: float
    q50: float
    q90: float
    quantile_error: float


@dataclass(frozen=True)
class IndexedPrompt:
    """The tokens of one (example, view) prompt as the index recorded them."""

    row: int
    example_id: str
    view: str
    token_ids: tuple[int, ...]
    regions: tuple[str, ...]
    passages: tuple[int, ...]  # 1-based passage number per token, 0 outside any passage
    top_start: int  # top hits were searched from here: the first passage (or question) token, or later


@dataclass(frozen=True, eq=False)
class NeuronTrace:
    """One neuron's activation on every token of one prompt (one forward, stopped after its layer)."""

    example_id: str
    view: str
    layer: int
    index: int
    token_ids: tuple[int, ...]
    regions: tuple[str, ...]
    passages: tuple[int, ...]
    values: Float[Tensor, "pos"]  # float32, CPU


# ----------------------------------------------------------------------------------------------
# Histogram bins


def _bin_limit_y() -> float:
    return math.asinh(BIN_LIMIT / BIN_SCALE)


def bin_edges(n_bins: int = N_BINS) -> Float[Tensor, "n_bins_plus_1"]:
    """The n_bins + 1 edges of the region histograms (float64, ascending, -100 .. 100)."""
    limit = _bin_limit_y()
    y = torch.linspace(-limit, limit, n_bins + 1, dtype=torch.float64)
    return BIN_SCALE * torch.sinh(y)


def _bins_of(x: Tensor, n_bins: int) -> Tensor:
    """The histogram bin of each value (int64, same shape), values beyond +-BIN_LIMIT in the edge bins.

    Computed in float32: a value within float32 rounding of a bin edge may land in the bin beside it.
    """
    limit = _bin_limit_y()
    y = torch.asinh(x.float() / BIN_SCALE)
    return y.add_(limit).mul_(n_bins / (2 * limit)).floor_().clamp_(0, n_bins - 1).long()


def histogram_quantiles(
    counts: Int[Tensor, "n_bins"], quantiles: Sequence[float] = QUANTILES
) -> tuple[list[float], float]:
    """Quantiles read from one histogram of the index's bins, and the widest bin they came from.

    The q-quantile is the point where the cumulative count reaches q * n, linear inside its bin on
    the asinh scale. NaN for an empty histogram.
    """
    counts = counts.to(torch.float64).cpu()
    n = float(counts.sum())
    if n == 0:
        return [math.nan] * len(quantiles), math.nan
    n_bins = counts.numel()
    limit = _bin_limit_y()
    width_y = 2 * limit / n_bins
    edges = bin_edges(n_bins)
    cumulative = counts.cumsum(0)
    out, error = [], 0.0
    for q in quantiles:
        target = q * n
        b = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64)).clamp(max=n_bins - 1))
        while counts[b] == 0:  # target on an edge between filled bins: the next filled one
            b += 1
        before = float(cumulative[b] - counts[b])
        frac = min(max((target - before) / float(counts[b]), 0.0), 1.0)
        y = -limit + (b + frac) * width_y
        out.append(BIN_SCALE * math.sinh(y))
        error = max(error, float(edges[b + 1] - edges[b]))
    return out, error


# ----------------------------------------------------------------------------------------------
# The index


def bytes_per_neuron(n_examples: int, n_views: int, top_k: int = TOP_K, window: int = WINDOW,
                     n_bins: int = N_BINS) -> int:
    """Bytes the index stores per neuron (see the module docstring for the layout)."""
    return (4 * n_examples * n_views + top_k * _HIT_BYTES + top_k * (2 * window + 1) * 2
            + len(STAT_REGIONS) * 8 + len(STAT_REGIONS) * n_bins * 4)


def example_hash(example: RagExample) -> str:
    """A stable hash of one example's content (id, question, answers, passages, flags)."""
    return stable_hash(example.to_dict())


def index_key(
    identity: ModelIdentity, example_hashes: Sequence[str], prompt_config: PromptConfig | dict[str, Any],
    views: Sequence[str], top_k: int, window: int, n_bins: int,
) -> str:
    """The cache key: model weights, data (in row order), prompt settings, views and layout."""
    prompt = prompt_config.to_dict() if isinstance(prompt_config, PromptConfig) else dict(prompt_config)
    return stable_hash(
        {"format_version": FORMAT_VERSION, "model": identity.fingerprint, "data": stable_hash(list(example_hashes)),
         "prompt": prompt, "views": list(views), "top_k": top_k, "window": window, "n_bins": n_bins,
         "bins": [BIN_SCALE, BIN_LIMIT]}
    )


_TENSOR_FIELDS = (
    "last_token", "top_values", "top_example", "top_view", "top_position", "top_token", "top_window",
    "region_sum", "region_count", "region_hist", "prompt_tokens", "prompt_regions", "prompt_passages",
    "prompt_offset", "prompt_length", "top_start",
)
_PER_NEURON = ("last_token", "top_values", "top_example", "top_view", "top_position", "top_token", "top_window",
               "region_sum", "region_hist")


@dataclass(frozen=True, eq=False)
class ActivationIndex:
    """Every neuron's recorded activations on a set of examples x views (see the module docstring).

    Tensors live on the CPU. Rows follow `example_ids`; view axes follow `views`; region axes follow
    STAT_REGIONS. top_*: descending along top_k; a slot never filled (fewer tokens than top_k) has
    value -inf and example row -1. prompt_*: every prompt's tokens concatenated in (row, view) order,
    prompt_offset / prompt_length locate one (length 0: no prompt in that view).
    """

    last_token: Float[Tensor, "n_examples n_views n_layers d_mlp"]
    top_values: Float[Tensor, "n_layers d_mlp top_k"]
    top_example: Int[Tensor, "n_layers d_mlp top_k"]
    top_view: Int[Tensor, "n_layers d_mlp top_k"]  # uint8
    top_position: Int[Tensor, "n_layers d_mlp top_k"]
    top_token: Int[Tensor, "n_layers d_mlp top_k"]
    top_window: Float[Tensor, "n_layers d_mlp top_k window_len"]  # float16
    region_sum: Float[Tensor, "n_regions n_layers d_mlp"]  # float64
    region_count: Int[Tensor, "n_regions"]
    region_hist: Int[Tensor, "n_regions n_layers d_mlp n_bins"]  # int32
    prompt_tokens: Int[Tensor, "n_tokens"]
    prompt_regions: Int[Tensor, "n_tokens"]  # int8, positions in REGIONS
    prompt_passages: Int[Tensor, "n_tokens"]  # int16
    prompt_offset: Int[Tensor, "n_examples n_views"]
    prompt_length: Int[Tensor, "n_examples n_views"]
    top_start: Int[Tensor, "n_examples n_views"]
    example_ids: tuple[str, ...]
    example_hashes: tuple[str, ...]
    views: tuple[str, ...]
    top_k: int
    window: int
    n_bins: int
    model: ModelIdentity
    prompt_config: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)

    # ---- shape ------------------------------------------------------------------------------

    @property
    def n_examples(self) -> int:
        return len(self.example_ids)

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    @property
    def d_mlp(self) -> int:
        return self.model.d_mlp

    def key(self) -> str:
        return index_key(self.model, self.example_hashes, self.prompt_config, self.views, self.top_k, self.window,
                         self.n_bins)

    def bytes_per_neuron(self) -> int:
        """Bytes of the per-neuron tensors divided by the number of neurons (the stored layout)."""
        total = sum(getattr(self, name).element_size() * getattr(self, name).numel() for name in _PER_NEURON)
        return total // (self.n_layers * self.d_mlp)

    # ---- checks -----------------------------------------------------------------------------

    def check_neuron(self, layer: int, index: int) -> None:
        """ConfigError naming the grid when (layer, index) is not one of the index's neurons."""
        if not (isinstance(layer, int) and isinstance(index, int)):
            raise ConfigError(f"a neuron is two integers (layer, index); got {layer!r}:{index!r}.")
        check_neuron(layer, index, self.n_layers, self.d_mlp)

    def check_model(self, model: Any) -> None:
        """ModelMismatchError naming both when the model's weights are not the ones the index was built on."""
        got = model_identity(model)
        want = self.model
        if got.fingerprint != want.fingerprint:
            raise ModelMismatchError(
                f"the activation index was built on {want.describe()} with weights {want.fingerprint}; the model "
                f"is {got.describe()} with weights {got.fingerprint}. Build an index on this model "
                "(`neurorit index`)."
            )

    def row_of(self, example_id: str) -> int | None:
        """The example's row, or None when the index does not hold it."""
        try:
            return self.example_ids.index(example_id)
        except ValueError:
            return None

    def _view_index(self, view: str) -> int:
        if view not in self.views:
            raise ConfigError(f"view {view!r} is not in the activation index; it holds {list(self.views)}.")
        return self.views.index(view)

    # ---- reading ----------------------------------------------------------------------------

    def prompt(self, row: int, view: str) -> IndexedPrompt | None:
        """The recorded tokens of one (example row, view); None where the example had no prompt there."""
        v = self._view_index(view)
        if not 0 <= row < self.n_examples:
            raise ConfigError(f"example row {row} is outside the index's 0..{self.n_examples - 1}.")
        length = int(self.prompt_length[row, v])
        if length == 0:
            return None
        start = int(self.prompt_offset[row, v])
        part = slice(start, start + length)
        return IndexedPrompt(
            row=row, example_id=self.example_ids[row], view=view,
            token_ids=tuple(int(t) for t in self.prompt_tokens[part].tolist()),
            regions=tuple(REGIONS[int(r)] for r in self.prompt_regions[part].tolist()),
            passages=tuple(int(p) for p in self.prompt_passages[part].tolist()),
            top_start=int(self.top_start[row, v]),
        )

    def last_token_values(self, layer: int, index: int) -> Float[Tensor, "n_examples n_views"]:
        """The neuron's last-token activation per example and view (NaN: no prompt there)."""
        self.check_neuron(layer, index)
        return self.last_token[:, :, layer, index].clone()

    def top_hits(self, layer: int, index: int) -> tuple[TopHit, ...]:
        """The neuron's top activations, strongest first, each with its window of tokens."""
        self.check_neuron(layer, index)
        values = self.top_values[layer, index].tolist()
        rows = self.top_example[layer, index].tolist()
        views = self.top_view[layer, index].tolist()
        positions = self.top_position[layer, index].tolist()
        tokens = self.top_token[layer, index].tolist()
        windows = self.top_window[layer, index].float()  # [top_k, window_len]
        hits = []
        for rank, (value, row, v, pos, tok) in enumerate(zip(values, rows, views, positions, tokens)):
            if row < 0:
                break
            view = self.views[v]
            start = int(self.prompt_offset[row, v])
            length = int(self.prompt_length[row, v])
            lo, hi = max(0, pos - self.window), min(length, pos + self.window + 1)
            part = slice(start + lo, start + hi)
            regions = tuple(REGIONS[int(r)] for r in self.prompt_regions[part].tolist())
            passages = tuple(int(p) for p in self.prompt_passages[part].tolist())
            w = windows[rank, lo - (pos - self.window) : hi - (pos - self.window)]
            hits.append(TopHit(
                rank=rank, value=float(value), row=int(row), example_id=self.example_ids[row], view=view,
                position=int(pos), token_id=int(tok), region=regions[pos - lo], passage=passages[pos - lo],
                window_start=lo, center=pos - lo,
                window_token_ids=tuple(int(t) for t in self.prompt_tokens[part].tolist()),
                window_values=tuple(float(x) for x in w.tolist()), window_regions=regions, window_passages=passages,
            ))
        return tuple(hits)

    def region_stats(self, layer: int, index: int) -> tuple[RegionStats, ...]:
        """Mean (exact) and 0.1 / 0.5 / 0.9 quantiles (histogram) per region of STAT_REGIONS."""
        self.check_neuron(layer, index)
        out = []
        for r, region in enumerate(STAT_REGIONS):
            n = int(self.region_count[r])
            (q10, q50, q90), error = histogram_quantiles(self.region_hist[r, layer, index], QUANTILES)
            mean = float(self.region_sum[r, layer, index]) / n if n else math.nan
            out.append(RegionStats(region, n, mean, q10, q50, q90, error))
        return tuple(out)

    # ---- artifact ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "kind": "activation_index", "key": self.key(),
            "model": dataclasses.asdict(self.model), "example_ids": list(self.example_ids),
            "example_hashes": list(self.example_hashes), "views": list(self.views), "top_k": self.top_k,
            "window": self.window, "n_bins": self.n_bins, "bins": {"scale": BIN_SCALE, "limit": BIN_LIMIT},
            "regions": list(REGIONS), "stat_regions": list(STAT_REGIONS), "prompt_config": self.prompt_config,
            "bytes_per_neuron": self.bytes_per_neuron(), "provenance": self.provenance,
        }

    def save(self, folder: Path) -> Path:
        """Write folder/index.safetensors, then folder/index.json (the commit marker), each atomically."""
        folder = Path(folder)
        store.check_folder_path(folder)
        store.write_tensors(folder / INDEX_TENSORS, {name: getattr(self, name) for name in _TENSOR_FIELDS})
        store.write_json(folder / INDEX_JSON, self.to_json())
        return folder

    @classmethod
    def load(cls, folder: Path, model: Any | None = None) -> "ActivationIndex":
        """Read and validate a saved index; with a model, refuse one built on other weights."""
        folder = Path(folder)
        if folder.name in (INDEX_JSON, INDEX_TENSORS):
            folder = folder.parent
        meta = store.read_json(folder / INDEX_JSON)
        if not isinstance(meta, dict) or meta.get("kind") != "activation_index":
            raise ArtifactError(f"{folder / INDEX_JSON} is not an activation index (no kind 'activation_index').")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{folder / INDEX_JSON} has format_version {meta.get('format_version')!r}, this neurorit reads "
                f"{FORMAT_VERSION}; build the index again (`neurorit index`)."
            )
        tensors = store.read_tensors(folder / INDEX_TENSORS)
        missing = [n for n in _TENSOR_FIELDS if n not in tensors]
        if missing:
            raise ArtifactError(f"{folder / INDEX_TENSORS} lacks tensors {missing}; build the index again.")
        try:
            index = cls(
                **{n: tensors[n] for n in _TENSOR_FIELDS},
                example_ids=tuple(meta["example_ids"]), example_hashes=tuple(meta["example_hashes"]),
                views=tuple(meta["views"]), top_k=int(meta["top_k"]), window=int(meta["window"]),
                n_bins=int(meta["n_bins"]), model=ModelIdentity(**meta["model"]),
                prompt_config=dict(meta["prompt_config"]), provenance=dict(meta.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{folder / INDEX_JSON} is not a complete activation index ({exc!r}).") from None
        _check_shapes(index, folder)
        if model is not None:
            index.check_model(model)
        return index


def _check_shapes(index: ActivationIndex, folder: Path) -> None:
    n, v, l, d, k = index.n_examples, len(index.views), index.n_layers, index.d_mlp, index.top_k
    expected = {
        "last_token": (n, v, l, d), "top_values": (l, d, k), "top_example": (l, d, k), "top_view": (l, d, k),
        "top_position": (l, d, k), "top_token": (l, d, k), "top_window": (l, d, k, 2 * index.window + 1),
        "region_sum": (len(STAT_REGIONS), l, d), "region_count": (len(STAT_REGIONS),),
        "region_hist": (len(STAT_REGIONS), l, d, index.n_bins), "prompt_offset": (n, v), "prompt_length": (n, v),
        "top_start": (n, v),
    }
    for name, shape in expected.items():
        got = tuple(getattr(index, name).shape)
        if got != shape:
            raise ArtifactError(
                f"{folder / INDEX_TENSORS}: {name} has shape {got}, {INDEX_JSON} implies {shape}; the two files do "
                "not belong together. Build the index again."
            )
    total = int(index.prompt_length.sum())
    if not (index.prompt_tokens.numel() == index.prompt_regions.numel() == index.prompt_passages.numel() == total):
        raise ArtifactError(f"{folder / INDEX_TENSORS}: the prompt tokens do not add up to their lengths ({total}).")


def index_dir(index: ActivationIndex) -> Path:
    """Where this index lives in the cache: cache/activations/<key>/."""
    return store.artifact_dir(INDEX_KIND, index.key())


def load_index(path: str | Path, model: Any | None = None) -> ActivationIndex:
    """ActivationIndex.load: a folder holding index.json + index.safetensors."""
    return ActivationIndex.load(Path(path), model)


def find_indexes(model: Any) -> list[Path]:
    """The cached indexes built on this model's weights, newest first."""
    fingerprint = model_identity(model).fingerprint
    root = store.cache_root() / INDEX_KIND
    found = []
    for marker in root.glob(f"*/{INDEX_JSON}") if root.is_dir() else ():
        try:
            meta = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(meta, dict) and meta.get("model", {}).get("fingerprint") == fingerprint:
            found.append((marker.stat().st_mtime, marker.parent))
    return [folder for _, folder in sorted(found, key=lambda x: -x[0])]


# ----------------------------------------------------------------------------------------------
# Running the model


def _device(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


def _neuron_acts(model: Any, token_ids: Sequence[int], layers: Sequence[int]) -> Float[Tensor, "pos n d_mlp"]:
    """The neurons of `layers` at every position of one prompt, float32 on the model's device.

    The forward stops after the highest layer asked for (the bridge's stop_at_layer), or computes
    the logits of the last position only when that is the last layer.
    """
    site = neuron_site(model)
    acts: dict[int, Tensor] = {}

    def make(layer: int) -> Any:
        def hook(x: Tensor, hook: Any) -> Tensor:
            a = x[0].detach()
            acts[layer] = a.clone() if a.dtype == torch.float32 else a.float()  # [pos, d_mlp]
            return x

        return hook

    tokens = torch.tensor([list(token_ids)], dtype=torch.long, device=_device(model))
    stop = max(layers) + 1
    with torch.no_grad(), model.hooks(fwd_hooks=[(site.hook_name(l), make(l)) for l in layers]):
        if stop < int(model.cfg.n_layers):
            model(tokens, stop_at_layer=stop)
        else:
            try:
                model(tokens, logits_to_keep=1)  # the unembedding for one position, not every one
            except TypeError:
                model(tokens)
    return torch.stack([acts[l] for l in layers], dim=1)  # [pos, n, d_mlp]


def _labels(prompt: Prompt, tokenizer: Any) -> tuple[Tensor, Tensor, int]:
    """Per-token region codes (int8), passage numbers (int16) and the first passage or question token."""
    spans = passage_spans(prompt, tokenizer)
    regions = torch.zeros(prompt.n_tokens, dtype=torch.int8)
    passages = torch.zeros(prompt.n_tokens, dtype=torch.int16)
    starts = []
    for i, ((lo, hi), passage) in enumerate(zip(spans.passages, prompt.passages), start=1):
        regions[lo:hi] = REGIONS.index("relevant" if passage.relevant else "irrelevant")
        passages[lo:hi] = i
        starts.append(lo)
    if spans.question is not None:
        lo, hi = spans.question
        regions[lo:hi] = REGIONS.index("question")
        starts.append(lo)
    return regions, passages, min(min(starts) if starts else 0, prompt.n_tokens - 1)


def _shared_prefix(token_ids: Sequence[int], earlier: Sequence[Sequence[int]]) -> int:
    """The longest run of leading tokens token_ids shares with one of the earlier prompts."""
    best = 0
    for other in earlier:
        n = 0
        for a, b in zip(token_ids, other):
            if a != b:
                break
            n += 1
        best = max(best, n)
    return best


def _prompt(model: Any, example: RagExample, view: str, prompt_config: PromptConfig) -> Prompt:
    return build_prompt(example, view, prompt_config, model.tokenizer, max_tokens=int(model.cfg.n_ctx))


def neuron_activations_over_prompt(
    model: Any, example: RagExample, view: str, layer: int, index: int, prompt_config: PromptConfig,
) -> NeuronTrace:
    """One neuron's activation on every token of the example's prompt in `view`.

    One forward, stopped after `layer`; only that layer is hooked.
    """
    check_neuron(layer, index, int(model.cfg.n_layers), int(model.cfg.d_mlp))
    prompt = _prompt(model, example, view, prompt_config)
    regions, passages, _ = _labels(prompt, model.tokenizer)
    values = _neuron_acts(model, prompt.token_ids, [layer])[:, 0, index].cpu()  # [pos]
    return NeuronTrace(
        example_id=example.id, view=view, layer=layer, index=index, token_ids=prompt.token_ids,
        regions=tuple(REGIONS[int(r)] for r in regions.tolist()), passages=tuple(int(p) for p in passages.tolist()),
        values=values,
    )


# ----------------------------------------------------------------------------------------------
# Building: a running state that prompts are folded into


@dataclass
class _Running:
    """The mutable state of one build (private): top-k, windows and histograms on the model's device."""

    top_k: int
    window: int
    n_bins: int
    values: Tensor  # [M, k] float32, M = n_layers * d_mlp
    example: Tensor  # [M, k] int32
    view: Tensor  # [M, k] uint8
    position: Tensor  # [M, k] int32
    token: Tensor  # [M, k] int32
    windows: Tensor  # [M, k, 2w+1] float16
    region_sum: Tensor  # [R, M] float64
    region_count: Tensor  # [R] int64
    region_hist: Tensor  # [R, M, n_bins] int32
    last: list[Tensor] = field(default_factory=list)  # per new example [V, M] float32 (CPU)
    tokens: list[Tensor] = field(default_factory=list)  # per (new example, view) prompt
    regions: list[Tensor] = field(default_factory=list)
    passages: list[Tensor] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)
    starts: list[list[int]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def empty(cls, n_neurons: int, top_k: int, window: int, n_bins: int, device: torch.device) -> "_Running":
        shape = (n_neurons, top_k)
        return cls(
            top_k=top_k, window=window, n_bins=n_bins,
            values=torch.full(shape, -math.inf, dtype=torch.float32, device=device),
            example=torch.full(shape, -1, dtype=torch.int32, device=device),
            view=torch.zeros(shape, dtype=torch.uint8, device=device),
            position=torch.full(shape, -1, dtype=torch.int32, device=device),
            token=torch.full(shape, -1, dtype=torch.int32, device=device),
            windows=torch.full((*shape, 2 * window + 1), math.nan, dtype=torch.float16, device=device),
            region_sum=torch.zeros(len(STAT_REGIONS), n_neurons, dtype=torch.float64, device=device),
            region_count=torch.zeros(len(STAT_REGIONS), dtype=torch.int64, device=device),
            region_hist=torch.zeros(len(STAT_REGIONS), n_neurons, n_bins, dtype=torch.int32, device=device),
        )

    @classmethod
    def resume(cls, index: ActivationIndex, device: torch.device) -> "_Running":
        m = index.n_layers * index.d_mlp
        flat = lambda t: t.reshape(m, *t.shape[2:]).to(device).clone()  # noqa: E731  [L, D, ...] -> [M, ...]
        return cls(
            top_k=index.top_k, window=index.window, n_bins=index.n_bins,
            values=flat(index.top_values), example=flat(index.top_example), view=flat(index.top_view),
            position=flat(index.top_position), token=flat(index.top_token), windows=flat(index.top_window),
            region_sum=index.region_sum.reshape(len(STAT_REGIONS), m).to(device).clone(),
            region_count=index.region_count.to(device).clone(),
            region_hist=index.region_hist.reshape(len(STAT_REGIONS), m, index.n_bins).to(device).clone(),
        )


def _fold(run: _Running, acts: Tensor, regions: Tensor, token_ids: Sequence[int], row: int, view: int,
          top_start: int) -> None:
    """Merge one prompt's activations acts [pos, M] (float32) into the running top-k and histograms."""
    n_pos, m = acts.shape
    device = acts.device
    k, w = run.top_k, run.window
    search = acts[top_start:]  # [n, M]: top hits are searched from top_start on
    # only neurons whose best value here beats their running k-th value can change their top-k
    hot = (search.amax(0) > run.values[:, -1]).nonzero().squeeze(1)  # [H]
    if hot.numel():
        kk = min(k, search.shape[0])
        cand_values, cand_pos = search[:, hot].topk(kk, dim=0)  # [kk, H]: the prompt's own top-k
        cand_values, cand_pos = cand_values.T, cand_pos.T + top_start  # [H, kk]
        merged = torch.cat([run.values[hot], cand_values], dim=1).topk(k, dim=1)  # [H, k] over the concatenation
        pick = merged.indices  # < k: a running entry, >= k: one of this prompt's
        old = pick.clamp(max=k - 1)

        def kept(t: Tensor) -> Tensor:  # the running entries at their new slots
            return t[hot].gather(1, old if t.ndim == 2 else old[:, :, None].expand(-1, -1, t.shape[2]))

        example, view_t, position, token, windows = (kept(t) for t in (
            run.example, run.view, run.position, run.token, run.windows))
        h, slot = (pick >= k).nonzero(as_tuple=True)  # the new entries
        pos = cand_pos[h, pick[h, slot] - k]  # [n_new]
        example[h, slot] = row
        view_t[h, slot] = view
        position[h, slot] = pos.to(torch.int32)
        token[h, slot] = torch.tensor(list(token_ids), dtype=torch.int32, device=device)[pos]
        at = pos[:, None] + torch.arange(-w, w + 1, device=device)  # [n_new, 2w+1]
        around = acts[at.clamp(0, n_pos - 1), hot[h][:, None]]  # [n_new, 2w+1]
        windows[h, slot] = torch.where((at >= 0) & (at < n_pos), around, math.nan).half()
        run.values[hot], run.example[hot], run.view[hot] = merged.values, example, view_t
        run.position[hot], run.token[hot], run.windows[hot] = position, token, windows
    # regions: exact sums, fixed-bin histograms (per neuron: a scatter along its own bins)
    regions = regions.to(device)
    for r, name in enumerate(STAT_REGIONS):
        chosen = acts[regions == REGIONS.index(name)]  # [n_r, M]
        if not chosen.shape[0]:
            continue
        run.region_sum[r] += chosen.double().sum(0)
        run.region_count[r] += chosen.shape[0]
        ones = torch.ones(m, chosen.shape[0], dtype=torch.int32, device=device)
        run.region_hist[r].scatter_add_(1, _bins_of(chosen, run.n_bins).T, ones)  # [M, n_bins] += [M, n_r]


def _run_examples(
    run: _Running, model: Any, examples: Sequence[RagExample], views: Sequence[str], prompt_config: PromptConfig,
    first_row: int, on_progress: ProgressFn,
) -> None:
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    layers = list(range(n_layers))
    total, done = len(examples) * len(views), 0
    for i, example in enumerate(examples):
        last = torch.full((len(views), n_layers * d_mlp), math.nan, dtype=torch.float32)
        lengths, starts = [], []
        shown: list[tuple[int, ...]] = []  # this example's prompts in the views before
        for v, view in enumerate(views):
            try:
                prompt = _prompt(model, example, view, prompt_config)
            except DataError as exc:
                log.warning("activation index: no %s prompt for example %s: %s", view, example.id, exc)
                run.skipped.append({"example_id": example.id, "view": view, "reason": str(exc)})
                lengths.append(0)
                starts.append(0)
            else:
                regions, passages, content = _labels(prompt, model.tokenizer)
                top_start = min(max(content, _shared_prefix(prompt.token_ids, shown)), prompt.n_tokens - 1)
                shown.append(prompt.token_ids)
                acts = _neuron_acts(model, prompt.token_ids, layers).reshape(prompt.n_tokens, -1)  # [pos, M]
                last[v] = acts[-1].cpu()
                _fold(run, acts, regions, prompt.token_ids, first_row + i, v, top_start)
                run.tokens.append(torch.tensor(prompt.token_ids, dtype=torch.int32))
                run.regions.append(regions)
                run.passages.append(passages)
                lengths.append(prompt.n_tokens)
                starts.append(top_start)
            done += 1
            on_progress(done, total, f"activations {example.id} {view}")
        run.last.append(last.view(len(views), n_layers, d_mlp))
        run.lengths.append(lengths)
        run.starts.append(starts)


def _finish(
    run: _Running, base: ActivationIndex | None, identity: ModelIdentity, examples: Sequence[RagExample],
    views: Sequence[str], prompt_config: dict[str, Any], provenance: dict[str, Any],
) -> ActivationIndex:
    n_layers, d_mlp = identity.n_layers, identity.d_mlp
    grid = lambda t: t.cpu().reshape(n_layers, d_mlp, *t.shape[1:])  # noqa: E731  [M, ...] -> [L, D, ...]
    n_views = len(views)
    new_last = torch.stack(run.last) if run.last else torch.zeros(0, n_views, n_layers, d_mlp)
    new_lengths = torch.tensor(run.lengths, dtype=torch.int32).view(-1, n_views)
    new_starts = torch.tensor(run.starts, dtype=torch.int32).view(-1, n_views)
    new = {
        "tokens": torch.cat(run.tokens) if run.tokens else torch.zeros(0, dtype=torch.int32),
        "regions": torch.cat(run.regions) if run.regions else torch.zeros(0, dtype=torch.int8),
        "passages": torch.cat(run.passages) if run.passages else torch.zeros(0, dtype=torch.int16),
    }
    if base is not None:
        new_last = torch.cat([base.last_token, new_last])
        new_lengths = torch.cat([base.prompt_length, new_lengths])
        new_starts = torch.cat([base.top_start, new_starts])
        new = {"tokens": torch.cat([base.prompt_tokens, new["tokens"]]),
               "regions": torch.cat([base.prompt_regions, new["regions"]]),
               "passages": torch.cat([base.prompt_passages, new["passages"]])}
    lengths = new_lengths.reshape(-1).long()
    offsets = (torch.cumsum(lengths, 0) - lengths).view(-1, n_views)
    ids = (base.example_ids if base else ()) + tuple(e.id for e in examples)
    hashes = (base.example_hashes if base else ()) + tuple(example_hash(e) for e in examples)
    skipped = (list(base.provenance.get("skipped", [])) if base else []) + run.skipped
    return ActivationIndex(
        last_token=new_last, top_values=grid(run.values), top_example=grid(run.example), top_view=grid(run.view),
        top_position=grid(run.position), top_token=grid(run.token), top_window=grid(run.windows),
        region_sum=run.region_sum.cpu().reshape(len(STAT_REGIONS), n_layers, d_mlp),
        region_count=run.region_count.cpu(),
        region_hist=run.region_hist.cpu().reshape(len(STAT_REGIONS), n_layers, d_mlp, run.n_bins),
        prompt_tokens=new["tokens"], prompt_regions=new["regions"], prompt_passages=new["passages"],
        prompt_offset=offsets, prompt_length=new_lengths, top_start=new_starts,
        example_ids=ids, example_hashes=hashes, views=tuple(views), top_k=run.top_k, window=run.window,
        n_bins=run.n_bins, model=identity, prompt_config=prompt_config,
        provenance={**provenance, "skipped": skipped, "n_prompts": int((new_lengths > 0).sum())},
    )


def check_index_settings(views: Sequence[str], top_k: int, window: int, n_bins: int) -> tuple[str, ...]:
    """The views as a tuple, once views, top_k, window and n_bins are allowed (else ConfigError naming them)."""
    views = tuple(views)
    if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
        raise ConfigError.field("build_index", "views", list(views), f"distinct views out of {list(VIEWS)}")
    for name, value, least in (("top_k", top_k, 1), ("window", window, 0), ("n_bins", n_bins, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError.field("build_index", name, value, f"an integer >= {least}")
    if n_bins > 4096:
        raise ConfigError.field("build_index", "n_bins", n_bins, "an integer in 2..4096")
    return views


def build_index(
    model: Any,
    examples: Sequence[RagExample],
    *,
    views: Sequence[str] = DEFAULT_VIEWS,
    prompt_config: PromptConfig | None = None,
    top_k: int = TOP_K,
    window: int = WINDOW,
    n_bins: int = N_BINS,
    use_cache: bool = True,
    on_progress: ProgressFn = no_progress,
) -> ActivationIndex:
    """Run the model over every example's prompt in every view and record every neuron.

    One forward per (example, view), one prompt at a time, on the model's device and in its dtype
    (activations are recorded in float32). An (example, view) without a prompt (DataError: no
    relevant or irrelevant passage, over the model's context) is recorded as missing, with a
    warning. Cached under cache/activations/<index_key>/ unless use_cache=False.
    """
    views = check_index_settings(views, top_k, window, n_bins)
    examples = list(examples)
    if not examples:
        raise DataError("build_index got no examples; give it at least one.")
    require_unique_ids(examples, "build_index")
    prompt_config = prompt_config or PromptConfig()
    identity = model_identity(model)
    key = index_key(identity, [example_hash(e) for e in examples], prompt_config, views, top_k, window, n_bins)
    if use_cache:
        cached = store.load_cached(INDEX_KIND, key, INDEX_JSON, ActivationIndex.load)
        if cached is not None:
            return cached
    run = _Running.empty(identity.n_layers * identity.d_mlp, top_k, window, n_bins, _device(model))
    _run_examples(run, model, examples, views, prompt_config, 0, on_progress)
    index = _finish(run, None, identity, examples, views, prompt_config.to_dict(), _provenance(model))
    if use_cache:
        store.save_cached(INDEX_KIND, key, index.save)
    return index


def _provenance(model: Any) -> dict[str, Any]:
    parameter = next(iter(model.parameters()))
    return {"device": parameter.device.type, "dtype": str(parameter.dtype).replace("torch.", "")}


def extend_index(
    index: ActivationIndex,
    model: Any,
    more_examples: Sequence[RagExample],
    *,
    use_cache: bool = True,
    on_progress: ProgressFn = no_progress,
) -> ActivationIndex:
    """A new index holding `index`'s examples and then `more_examples`, without recomputing the old ones.

    Examples already in the index (same id and content) are skipped; an id the index holds with
    other content is refused (DataError). The running top-k and the histograms continue from the
    stored ones, so the result equals build_index over all the examples at once (same model and
    device). The prompt settings, views and layout are the index's own.
    """
    index.check_model(model)
    more = list(more_examples)
    require_unique_ids(more, "extend_index")
    known = dict(zip(index.example_ids, index.example_hashes))
    new = []
    for example in more:
        h = example_hash(example)
        if example.id not in known:
            new.append(example)
        elif known[example.id] != h:
            raise DataError(
                f"example {example.id} is in the activation index with other content (question, answers or "
                "passages changed); give it another id, or build a new index."
            )
    if not new:
        return index
    prompt_config = PromptConfig.from_dict(index.prompt_config)
    key = index_key(index.model, index.example_hashes + tuple(example_hash(e) for e in new), index.prompt_config,
                    index.views, index.top_k, index.window, index.n_bins)
    if use_cache:
        cached = store.load_cached(INDEX_KIND, key, INDEX_JSON, ActivationIndex.load)
        if cached is not None:
            return cached
    run = _Running.resume(index, _device(model))
    _run_examples(run, model, new, index.views, prompt_config, index.n_examples, on_progress)
    out = _finish(run, index, index.model, new, index.views, index.prompt_config,
                  {**{k: v for k, v in index.provenance.items() if k != "skipped"}, **_provenance(model)})
    if use_cache:
        store.save_cached(INDEX_KIND, key, out.save)
    return out

