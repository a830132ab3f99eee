#!/usr/bin/env bash
# Install (if needed, with test tools and chromium) and run the whole test suite, offline.
# Extra arguments go to pytest, e.g. -m "not slow" for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec python -m pytest -q -ra "$@"
