#!/usr/bin/env bash
# The main job on the embedded default: a tiny random checkpoint in the released layout and generated clips —
# check the data, cache latents and text, train a LoRA for a few steps, write a validation video and the LoRA
# files. Runs on a CPU in a few minutes. Output: runs/demo/ (override with the first argument).
source "$(dirname "$0")/setup.sh"
echo "demo: tiny checkpoint + generated clips → check, cache, train 120 CPU steps, validate, export (a few minutes) into ${1:-runs/demo}/"
longcat-nb demo --output "${1:-runs/demo}"
