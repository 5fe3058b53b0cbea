#!/usr/bin/env bash
# The training, loader and SoundNet benchmarks in one go, merged into one JSON: made for the first GPU run
# (under 8 minutes on one GPU), and the same on CPU today with smaller settings.
#
#     benchmarks/gpu.sh                 # DEVICE=cuda when torch sees a GPU, else cpu
#     DEVICE=cpu OUT=bench-cpu.json benchmarks/gpu.sh
#
# Training: the hinge (default) and WGAN-GP objectives, the plain fp32 eager loop against channels_last, bf16
# autocast, torch.compile and all three, in the same run (images/s, s/step, model TFLOP/s by FLOP count, peak
# memory); the loader's in-memory path against DataLoader reads; SoundNet-8 feature extraction windows/s per
# batch size. Each part has its own time limit, so one that hangs cannot take the whole budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
OUT=${OUT:-bench-$DEVICE.json}
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT

if [ "$DEVICE" = cuda ]; then  # full size: widths 64, batch 64
    train=(--ngf 64 --ndf 64 --batch 64 --steps 20 --clips 2048)
    loader=(--batch 64 --batches 200 --device cuda)
    soundnet=(--batch-sizes 1 8 32 64 128 --min-seconds 2)
else  # two CPU cores: the same code paths at a size that finishes in minutes
    train=(--ngf 16 --ndf 16 --batch 16 --steps 6 --clips 256 --threads 2)
    loader=(--batch 64 --batches 50 --device cpu)
    soundnet=(--batch-sizes 1 16 64 --min-seconds 1 --threads 2)
fi

run_part() {  # name, time limit (s), command...
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*"
    local start; start=$(date +%s)
    if timeout "$limit" "$@"; then
        echo "== $name done in $(($(date +%s) - start)) s"
    else
        echo "== $name FAILED or timed out (status $?); its JSON is left out"
    fi
}
run_part train 300 "$PY" benchmarks/train.py --device "$DEVICE" --objectives hinge,wgan-gp \
    --variants "fp32 eager,channels_last,bf16,compile,all" "${train[@]}" --out "$parts/train.json"
run_part loader 60 "$PY" benchmarks/loader.py "${loader[@]}" --out "$parts/loader.json"
run_part soundnet 90 "$PY" benchmarks/soundnet.py --device "$DEVICE" "${soundnet[@]}" --out "$parts/soundnet.json"

"$PY" - "$parts" "$OUT" "$DEVICE" <<'PY'
import json, platform, sys
from pathlib import Path

import torch

parts, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
merged = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
          "torch": torch.__version__}
for name in ("train", "loader", "soundnet"):
    path = parts / f"{name}.json"
    merged[name] = json.loads(path.read_text()) if path.is_file() else {"error": "failed or timed out"}
rows = [r for r in merged["train"].get("rows", []) if "error" not in r]
for objective in sorted({r["objective"] for r in rows}):
    base = next((r for r in rows if r["objective"] == objective and r["variant"] == "fp32 eager"), None)
    for r in rows:
        if base and r["objective"] == objective:
            r["speedup_vs_fp32_eager"] = base["s_per_step"] / r["s_per_step"]
print(f"\n{'objective':<9} {'variant':<14} {'img/s':>9} {'TFLOP/s':>8} {'x fp32':>7} {'MiB':>7}")
for r in rows:
    print(f"{r['objective']:<9} {r['variant']:<14} {r['images_per_s']:>9.1f} {r['model_tflops_per_s']:>8.3f} "
          f"{r.get('speedup_vs_fp32_eager', float('nan')):>7.2f} {r.get('peak_memory_mib', float('nan')):>7.0f}")
out.write_text(json.dumps(merged, indent=2) + "\n")
print(f"wrote {out}")
PY
