#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite: `bash scripts/test.sh [pytest args]`.
# Exit code: pytest's (no tests collected counts as a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium (Debian) drives the browser test; fonts make its screenshot readable
source scripts/setup.sh test chromium:chromium /usr/share/fonts/truetype/dejavu:fonts-dejavu-core

# PASSIVE: OpenMP threads that spin-wait collapse throughput when a test runs a server and a client at once
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE
echo "== pytest"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit "$rc"
