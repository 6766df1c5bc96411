#!/usr/bin/env bash
# Train the embedded ShapeWorld model in one call of a lent GPU machine (the `device` tool's `run`).
#
#   bash tools/device_train.sh MINUTES [RESUME] [-- more `diffedit shapeworld train` options]
#
# Without RESUME: VAE then UNet + text encoder in this one call (--stage all). With RESUME (a folder
# holding model/ or a model folder, carried in): the UNet continues from that model's fp16 weights
# (fresh optimizer), the only state that fits through the machine's file limits. Then it evaluates the
# model (`diffedit shapeworld evaluate`) and writes to $OUT, which comes back:
#   model.tar.part-aa, -ab ...  the model folder, tarred and split under the 16 MiB file limit
#   train.log, evaluate.json, samples.png (the last sample grid)
# Bring the model back with:  cat FILES_AT/model.tar.part-* | tar -xf - -C runs/gpu1
# Environment: CONFIG (full), DEVICE (cuda), EVAL_CAPTIONS (200), EVAL_SCENES (64), WORK (/tmp/sw). The device image
# lacks diffusers, importlib_metadata and lazy_importer: their wheels travel in .whl/ (carry: [".whl"]).
set -euo pipefail
minutes=${1:?usage: tools/device_train.sh MINUTES [RESUME] [-- options]}
shift
resume=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then resume=$1; shift; fi
[ "${1:-}" = "--" ] && shift
config=${CONFIG:-full}
device=${DEVICE:-cuda}
work=${WORK:-/tmp/sw}

out=${OUT:?OUT must name the folder that comes back}
source "$(dirname "$0")/device_env.sh"

args=(--output "$work" --config "$config" --device "$device" --minutes "$minutes")
if [ -n "$resume" ]; then args+=(--stage unet --resume "$resume"); fi
python3 -m diffedit.cli shapeworld train "${args[@]}" "$@" 2>&1 | tee "$out/train.log"

tar -C "$work" -cf - model | split -b 15M - "$out/model.tar.part-"
last=$(ls "$work"/samples/final_step_*.png 2>/dev/null | tail -n 1)
[ -n "$last" ] && cp "$last" "$out/samples.png"
python3 -m diffedit.cli shapeworld evaluate --model "$work/model" --device "$device" \
    --captions "${EVAL_CAPTIONS:-200}" --scenes "${EVAL_SCENES:-64}" --json "$out/evaluate.json" 2>&1 | tee -a "$out/train.log"
ls -l "$out"
