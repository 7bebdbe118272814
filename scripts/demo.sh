#!/usr/bin/env bash
# Set up a fresh machine and serve the demo (Gradio Space) with the bundled model on http://127.0.0.1:7860.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh space
export GRADIO_ANALYTICS_ENABLED=False  # the bundled model is local: no network needed
exec python space/app.py
