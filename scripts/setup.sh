# Sourced by scripts/demo.sh and scripts/test.sh: creates .venv and installs longcat_nb with its dev tools.
# The pinned CPU torch is installed first so nothing pulls the multi-GB CUDA build on CPU-only machines;
# on a GPU machine, install your CUDA torch first (or drop the pin) and the same steps follow.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=$(sha1sum pyproject.toml | cut -c1-40)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing torch ${TORCH_VERSION:-2.13.0} and longcat_nb with its dependencies into .venv/" \
       "(first run or pyproject.toml changed; a few minutes, mostly downloads) ..."
  t0=$(date +%s)
  python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored: it is neither" || true
  python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
  python -c "import longcat_nb, torch, diffusers, nbdev" && echo "$stamp" > .venv/.setup-stamp
  echo "setup: done in $(( $(date +%s) - t0 )) s"
fi
export MPLBACKEND=Agg PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
