#!/usr/bin/env bash
# Real-browser test of the widget workbench: installs Chromium + chromedriver (Debian packages) and selenium when
# missing, starts JupyterLab headless on 127.0.0.1, opens examples/workbench.ipynb (a copy, under runs/browser/work),
# runs it on the embedded tiny default and clicks config → check → cache → train (a few steps) → sample, asserting
# what the widgets render. Screenshots: runs/browser/*.png. Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -z "${VIRTUAL_ENV:-}" ]; then source scripts/setup.sh; fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python -c "import selenium" 2>/dev/null || python -m pip install -q --disable-pip-version-check "selenium>=4.20"
OUT="$ROOT/runs/browser"
rm -rf "$OUT"; mkdir -p "$OUT/work"
cp examples/workbench.ipynb "$OUT/work/"
PORT=${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg JUPYTER_CONFIG_DIR="$OUT/jupyter-config"
jupyter lab --no-browser --ip=127.0.0.1 --port="$PORT" --IdentityProvider.token="$TOKEN" --ServerApp.root_dir="$OUT/work" \
  --allow-root --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate > "$OUT/jupyterlab.log" 2>&1 &
LAB=$!
trap 'kill "$LAB" 2>/dev/null || true; wait "$LAB" 2>/dev/null || true' EXIT
python tests/browser_workbench.py --url "http://127.0.0.1:$PORT/lab/tree/workbench.ipynb?token=$TOKEN" --out "$OUT" \
  --chromium "$(command -v chromium)" --chromedriver "$(command -v chromedriver)"
