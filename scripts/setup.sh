#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: `source scripts/setup.sh EXTRAS [DEBIAN_PACKAGES...]`.
# Installs the Debian packages that are missing, creates .venv, installs pneumonia-hf[EXTRAS] into it and
# activates it. Works as root (CI) or with sudo.
set -euo pipefail
extras=$1; shift
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
PY=${PYTHON:-python3}
missing=()
if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
for need in "$@"; do  # "command:package", or "/path:package" for a package that installs no command
  what=${need%%:*}
  if [[ $what == /* ]]; then [ -e "$what" ] || missing+=("${need##*:}")
  else command -v "$what" >/dev/null 2>&1 || missing+=("${need##*:}"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
echo "== installing pneumonia-hf[$extras]"
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[$extras]"
