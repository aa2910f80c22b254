#!/usr/bin/env bash
# The commands a session with a lent GPU runs through the device tool (one H100/H200, python3 with
# torch, no installs, only the repository travels). Before the first one, on this machine:
#   mkdir -p .carry && cp ../shared/data/cifar10-jpeg.zip .carry/     # git-ignored, 59 MiB, carried
# then, with the device tool's run (carry: [".carry/cifar10-jpeg.zip"]), in this order:
#   bash benchmarks/gpu_run.sh check   # issue 14: benchmarks/gpu_check.py, <= 4 min      (timeout_s 300)
#   bash benchmarks/gpu_run.sh tta     # issue 15: the 5-minute recipe, stopped at 6.5 min (timeout_s 480)
#   bash benchmarks/gpu_run.sh slice   # issue 15, only with a fresh budget: 8 min of the
#                                      # 300-epoch recipe (timeout_s 570)
# Each writes its JSON, markdown, logs (and curve.png where matplotlib exists) under $OUT; checkpoints
# and the extracted images stay in /tmp/astro-gpu-work. Nothing here needs matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
zip="${ASTRO_CIFAR_ZIP:-.carry/cifar10-jpeg.zip}"
out="${OUT:-/tmp/astro-gpu-out}"
work="${ASTRO_GPU_WORK:-/tmp/astro-gpu-work}"
py="${PYTHON:-python3}"
export PYTHONPATH=.
mkdir -p "$out" "$work"
if [ ! -f "$zip" ]; then
    echo "$zip is missing: copy ../shared/data/cifar10-jpeg.zip into .carry/ and carry it" >&2
    exit 2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; \
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } \
  > "$out/device-$mode.txt" 2>&1
case "$mode" in
check)
    "$py" benchmarks/gpu_check.py --data "$zip" --out "$out/gpu_check" --workdir "$work/check" 2>&1 \
        | tee "$out/gpu_check.log"
    ;;
tta)
    "$py" benchmarks/time_to_accuracy.py --data "$zip" --out "$out/tta" --workdir "$work/tta" \
        --max-minutes 6.5 2>&1 | tail -n 200 > "$out/tta.log"
    cat "$out/tta/time_to_accuracy.md"
    ;;
slice)
    "$py" benchmarks/time_to_accuracy.py --data "$zip" --out "$out/slice" --workdir "$work/tta" \
        --recipe cifar10_cct_7_3x1 --max-minutes 8 -- data.source=imagefolder \
        "data.mean=[0.4914,0.4822,0.4465]" "data.std=[0.2470,0.2435,0.2616]" 2>&1 | tail -n 200 > "$out/slice.log"
    cat "$out/slice/time_to_accuracy.md"
    ;;
*)
    echo "usage: bash benchmarks/gpu_run.sh check|tta|slice" >&2
    exit 2
    ;;
esac
