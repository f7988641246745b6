#!/usr/bin/env bash
# GPU discovery script for Spark resource scheduling (the pattern of Spark's
# examples/src/main/scripts/getGpusResources.sh): prints the GPUs of this node as
#   {"name": "gpu", "addresses": ["0", "1"]}
# Used by executors (spark.executor.resource.gpu.discoveryScript, YARN/Kubernetes) or by
# standalone workers (spark.worker.resource.gpu.discoveryScript). Must be executable.
set -euo pipefail

ADDRS="$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | sed '/^$/d' \
  | sed 's/.*/"&"/' | paste -sd, -)"
echo "{\"name\": \"gpu\", \"addresses\": [${ADDRS}]}"
