#!/usr/bin/env bash
# Run the painter benchmarks one after another on one device, each one's output to a log.
#
#   bash bench/run_all.sh OUT_DIR [painter decode encode e2e memory render]
#
# DEVICE (default cuda) picks the device; BENCH_TIMEOUT (default 300 s) bounds each one,
# so one that hangs still leaves the others' figures. The end-to-end chart goes to OUT_DIR.
set -uo pipefail
out=${1:?usage: bench/run_all.sh OUT_DIR [benchmark ...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(painter decode encode e2e memory render)
device=${DEVICE:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."
status=0
for name in "${names[@]}"; do
  extra=()
  [ "$name" = e2e ] && extra=(--chart "$out/paint_job_stages_${device%%:*}.png")
  echo "=== bench_$name --device $device ($(date -u +%H:%M:%S))"
  start=$SECONDS
  timeout "${BENCH_TIMEOUT:-300}" python3 "bench/bench_$name.py" --device "$device" "${extra[@]}" 2>&1 \
    | tee "$out/bench_$name.log"
  rc=${PIPESTATUS[0]}
  echo "=== bench_$name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
