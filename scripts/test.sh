#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite: `bash scripts/test.sh [pytest args]`.
# Installs Debian's chromium (for the browser test) when missing, a virtualenv in .venv, the package with
# its test extras, then runs pytest. Exit code: pytest's (no tests collected counts as a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "== installing chromium (Debian) for the browser test"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "== installing python3-venv (Debian)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
echo "== installing pneumonia-hf[test]"
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"

# PASSIVE: OpenMP threads that spin-wait collapse throughput when a test runs a server and a client at once
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE
echo "== pytest"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit "$rc"
