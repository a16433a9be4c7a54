#!/usr/bin/env bash
# Kernel throughput per type and backend (gpuquant bench, identity-checked against llama.cpp first) and one
# end-to-end --profile run per device, recorded as JSON in bench/results/ with the machine and the date.
set -euo pipefail
cd "$(dirname "$0")/.."
day=$(date +%F)
mkdir -p bench/results
python3 -m gpuquant bench --rows ${ROWS:-1024} --cols ${COLS:-4096} --repeat ${REPEAT:-5} \
    --json "bench/results/kernels-$day.json"
model=bench/.cache/SmolLM2-135M-F16.gguf
if [ ! -f "$model" ]; then
  mkdir -p bench/.cache
  python3 -m gpuquant run "$(python3 -m gpuquant.demo_model)" --type F16 --allow-requantize -o "$model" --quiet
fi
devices=${DEVICES:-"cpu emulated $(python3 -c 'from gpuquant.backends import cuda; print(*range(cuda.device_count()))')"}
for dev in $devices; do
  python3 -m gpuquant run "$model" --type ${TYPE:-Q4_K_M} -o "bench/.cache/out/profile-$dev.gguf" --force \
      --device "$dev" --profile --json "bench/results/profile-$dev-$day.json"
done
