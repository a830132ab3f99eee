"""Shared test fixtures: offline guard, the bundled model, tiny models built from config.

The session is offline: HF_HUB_OFFLINE=1 and any socket connection outside loopback is refused.
Tiny models (2 layers, a gated-MLP Llama and a GELU GPT-2) are built from config with fixed seeds
and the bundled model's tokenizer, saved to a temporary folder and loaded through the same
`load_model` path as real models.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

_real_connect = socket.socket.connect


def _guarded_connect(self, address):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        raise OSError(f"tests are offline: refused a connection to {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (always there in CI); skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from neurorit.models import bundled_model_dir

    return bundled_model_dir()


@pytest.fixture(scope="session")
def tokenizer(bundled_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_dir)


def _save_tiny(kind: str, folder: Path, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=1024,
            activation_function="gelu_new", initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = folder / f"tiny-{kind}"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    return _save_tiny("llama", tmp_path_factory.mktemp("models"), tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    return _save_tiny("gpt2", tmp_path_factory.mktemp("models"), tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path):  # type: ignore[no-untyped-def]
    from neurorit.models import load_model

    return load_model(str(tiny_llama_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir: Path):  # type: ignore[no-untyped-def]
    from neurorit.models import load_model

    return load_model(str(tiny_gpt2_dir), device="cpu", dtype="float32")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, tiny_llama, tiny_gpt2):  # type: ignore[no-untyped-def]
    return tiny_llama if request.param == "llama" else tiny_gpt2


@pytest.fixture(scope="session")
def smol(bundled_dir: Path):  # type: ignore[no-untyped-def]
    from neurorit.models import load_model

    return load_model(None, device="cpu", dtype="float32")


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama_dir: Path) -> Path:
    """The workbench under test: the tiny Llama as its model, on the CPU, with its own cache."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    monkeypatch.setenv("NEURORIT_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("NEURORIT_DEVICE", "cpu")
    monkeypatch.delenv("NEURORIT_DTYPE", raising=False)
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
