#!/usr/bin/env bash
# Spark's GPU discovery script for `python benchmarks/bench.py --gpu`: prints the resource JSON
# Spark expects, {"name": "gpu", "addresses": ["0", ...]}, from nvidia-smi; without a GPU it
# says so on one line (stderr) and exits 1.
set -uo pipefail
if ! ids=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null); then
  echo "no GPU: nvidia-smi is missing or failed" >&2
  exit 1
fi
addresses=""
for id in $ids; do
  addresses="${addresses:+$addresses,}\"${id//[^0-9]/}\""
done
if [ -z "$addresses" ]; then
  echo "no GPU: nvidia-smi lists none" >&2
  exit 1
fi
echo "{\"name\": \"gpu\", \"addresses\": [$addresses]}"
