#!/usr/bin/env bash
# The commands a session with a lent GPU runs through the device tool (one H100/H200, python3 with
# torch, no installs, only the repository travels). Before the first one, on this machine, once:
#   mkdir -p .carry/site && cp ../shared/data/cifar10-jpeg.zip .carry/                 # 59 MiB
#   python3 -m pip download --no-deps --only-binary=:all: -d /tmp/whl platformdirs \
#       && unzip -o -q /tmp/whl/platformdirs-*.whl -d .carry/site   # the GPU image lacks platformdirs
# (.carry/ is git-ignored), then, with the device tool's run
# (carry: [".carry/cifar10-jpeg.zip", ".carry/site"]), one of:
#   bash benchmarks/gpu_run.sh issue22 # issue 22 items 2-5 and 7: gpu_issue22.py, 9 min budget (timeout_s 600)
#   bash benchmarks/gpu_run.sh paper   # issue 22 item 6: the 300+10-epoch recipe, batch 512, stopped
#                                      # at 8.5 min if unfinished                           (timeout_s 600)
#   bash benchmarks/gpu_run.sh check   # issue 14: benchmarks/gpu_check.py, <= 4 min      (timeout_s 300)
#   bash benchmarks/gpu_run.sh tta     # issue 15: the 5-minute recipe, stopped at 6.5 min (timeout_s 480)
#   bash benchmarks/gpu_run.sh slice   # issue 15, only with a fresh budget: 8 min of the
#                                      # 300-epoch recipe (timeout_s 570)
# Each writes its JSON, markdown, logs (and curve.png where matplotlib exists) under $OUT (at most 8
# files come back); checkpoints and the extracted images stay in /tmp/astro-gpu-work.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
zip="${ASTRO_CIFAR_ZIP:-.carry/cifar10-jpeg.zip}"
out="${OUT:-/tmp/astro-gpu-out}"
work="${ASTRO_GPU_WORK:-/tmp/astro-gpu-work}"
py="${PYTHON:-python3}"
# ASTRO_GPU_SMOKE=1: the same commands on the CPU with tiny sizes (tests/test_gpu_issue22.py runs them)
smoke="${ASTRO_GPU_SMOKE:+--smoke}"
export PYTHONPATH=.:.carry/site   # .carry/site: platformdirs, unpacked from its wheel (above)
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"
if [ ! -f "$zip" ]; then
    echo "$zip is missing: copy ../shared/data/cifar10-jpeg.zip into .carry/ and carry it" >&2
    exit 2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; \
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } \
  > "$out/device-$mode.txt" 2>&1
case "$mode" in
issue22)
    "$py" benchmarks/gpu_issue22.py --data "$zip" --out "$out" --workdir "$work/issue22" --budget-s 540 $smoke 2>&1 \
        | tail -n 400 > "$out/issue22.log"
    cat "$out/gpu_issue22.md"
    ;;
paper)
    # The CCT paper's cifar10_cct_7_3x1 (300 + 10 epochs, its augmentation) at batch 512 instead of 128,
    # the learning rate rescaled by the square-root rule (55e-5 * sqrt(4) = 1.1e-3, as the fast recipe);
    # evaluated every 5 epochs and saved every 10 (310 evaluations and checkpoint writes would cost
    # about a minute); stopped at 8.5 min if unfinished, its best checkpoint then scored on test.
    "$py" benchmarks/time_to_accuracy.py --data "$zip" --out "$out/paper" --workdir "$work/paper" \
        --recipe cifar10_cct_7_3x1 --max-minutes 8.5 --test-if-stopped $smoke -- data.source=imagefolder \
        "data.mean=[0.4914,0.4822,0.4465]" "data.std=[0.2470,0.2435,0.2616]" data.pipeline=tensor \
        train.batch_size=512 train.lr=1.1e-3 train.eval_every=5 output.save_every=10 output.plots=false \
        ${smoke:+train.batch_size=16 train.epochs=5 model.name=cct_2_3x2_32} 2>&1 | tail -n 200 > "$out/paper.log"
    rm -f "$out/paper/train.log"   # at most 8 files come back; the jsonl stream stays in paper.log's tail
    cat "$out/paper/time_to_accuracy.md"
    ;;
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
    echo "usage: bash benchmarks/gpu_run.sh issue22|paper|check|tta|slice" >&2
    exit 2
    ;;
esac
