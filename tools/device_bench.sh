#!/usr/bin/env bash
# The GPU figures of issues 5 and 24 (speed: the presets fast and default, our single decoding and diffusers'
# pipeline in one run, peak GPU memory; single edits and batches of 8) and, given a model folder, issue 4's
# quality benchmark on it, in
# one call of a lent GPU machine (the `device` tool's `run`; carry ".whl", and the model's folder):
#
#   bash tools/device_bench.sh [MODEL_DIR]
#
# Writes to $OUT (at most 8 files come back): gpu.txt, bench.log, speed_single.json (no compile),
# speed_compile.json, speed_batch8.json (both with --compile), and with MODEL_DIR quality.json and
# quality.md (300 cases, fresh seed 4242). A failing step is logged and the next one still runs.
# Environment: DEVICE (cuda), SIZE (512), STEPS (50), SPEED_MODEL (sd15-random), CASES (300), SEED (4242),
# SPEED ("1": run the speed steps).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
device=${DEVICE:-cuda}
size=${SIZE:-512}
log="$OUT/bench.log"
bench() { python3 -m diffedit.cli bench "$@" 2>&1 | tee -a "$log" || echo "FAILED: bench $*" | tee -a "$log"; }

if [ "${SPEED:-1}" = "1" ]; then
    common=(--model "${SPEED_MODEL:-sd15-random}" --device "$device" --size "$size" --steps "${STEPS:-50}"
            --methods fast,default,one_decoding,diffusers)
    [ "$device" = cuda ] && common+=(--dtype fp16)
    bench speed "${common[@]}" --json "$OUT/speed_single.json"
    compile=()
    [ "$device" = cuda ] && compile=(--compile)
    bench speed "${common[@]}" "${compile[@]}" --json "$OUT/speed_compile.json"
    bench speed "${common[@]}" "${compile[@]}" --batch 8 --json "$OUT/speed_batch8.json"
fi
if [ $# -ge 1 ]; then
    bench quality --model "$1" --device "$device" --cases "${CASES:-300}" --seed "${SEED:-4242}" -q \
        --json "$OUT/quality.json" --markdown "$OUT/quality.md"
    cat "$OUT/quality.md" 2>/dev/null | tee -a "$log"
fi
ls -l "$OUT"
