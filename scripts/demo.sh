#!/usr/bin/env bash
# Set up a fresh machine and serve the demo (Gradio Space) with the bundled model on http://127.0.0.1:7860.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh space
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec python space/app.py
