#!/usr/bin/env bash
# Install (if needed) and open the workbench on the bundled model at http://127.0.0.1:8501
# Extra arguments go to streamlit, e.g. --server.port 8600.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec streamlit run streamlit_app.py --server.address 127.0.0.1 "$@"
