#!/usr/bin/env bash
# Assemble what a device call carries (both folders git-ignored, ~44 MiB together) before `bash
# benchmarks/gpu_session.sh PART` runs there with the device tool's `carry: [".whl", ".dev"]`:
#   .whl/      the shared py3.12 wheels (diffusers, PyAV, fastcore, ftfy, wcwidth, importlib_metadata)
#   .dev/whl/  optimum-quanto 0.2.7, torchao 0.17.0 and ipywidgets with IPython (pure-Python wheels, fetched once)
#   .dev/fullscale_e2e.py   the shared full-size end-to-end tool
#   .dev/commit   the tree's commit (run this again after committing, before a call)
# Idempotent; run from anywhere: bash benchmarks/device_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
mkdir -p .whl .dev/whl
cp -u "$SHARED"/wheels/device-py312/*.whl .whl/
cp -u "$SHARED"/tools/fullscale_e2e.py .dev/
# and the widgets' stack, which the device image lacks (the Sample tab's benchmark imports longcat_nb.widgets)
ls .dev/whl/optimum_quanto-0.2.7-*.whl .dev/whl/torchao-0.17.0-*.whl .dev/whl/ipywidgets-*.whl >/dev/null 2>&1 ||
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    -d .dev/whl optimum-quanto==0.2.7 torchao==0.17.0 ipywidgets widgetsnbextension jupyterlab_widgets comm ipython \
    traitlets decorator jedi parso matplotlib-inline pexpect ptyprocess prompt_toolkit pygments stack_data asttokens \
    executing pure_eval ipython_pygments_lexers
# the tree's commit, for results written on the device (its copy's git metadata is not this tree's): "-dirty" when
# the tree has uncommitted changes
echo "$(git rev-parse --short HEAD)$([ -z "$(git status --porcelain --untracked-files=no)" ] || echo -dirty)" > .dev/commit
du -sh .whl .dev
