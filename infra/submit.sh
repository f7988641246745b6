#!/usr/bin/env bash
# Submit the nightly tagging job (jobs/tag_catalog.py) to a cluster, shipping the packed
# environment from infra/package.sh to the executors. Every argument goes to the job:
#
#   infra/submit.sh --base-library URI --commodity-library URI --model URI \
#                   --run-date YYYY-MM-DD [--run-id ID] [--config FILE] [...]
#
# Settings (environment variables, defaults in brackets):
#   SPARK_HOME                     spark-submit from $SPARK_HOME/bin [spark-submit on PATH]
#   PRODCLF_MASTER                 yarn | spark://host:7077 | k8s://https://host:443 [yarn]
#   PRODCLF_DEPLOY_MODE            client | cluster [client]
#   PRODCLF_ENV_ARCHIVE            the packed environment; a local path or hdfs://, s3a://
#                                  [dist/prodclf-env.tar.gz]
#   PRODCLF_DRIVER_PYTHON          client mode: a local Python with prodclf installed
#                                  [.venv/bin/python, else python3]
#   PRODCLF_EXECUTOR_CORES         [4]
#   PRODCLF_EXECUTOR_MEMORY        JVM heap per executor [4g]
#   PRODCLF_EXECUTOR_MEMORY_OVERHEAD  off-heap per executor: TensorFlow in the Python
#                                  workers lives here (about 1.5g per core) [6g]
#   PRODCLF_NUM_EXECUTORS          YARN/Kubernetes; unset: the cluster's (dynamic) allocation
#   PRODCLF_DRIVER_MEMORY          [2g]
#   PRODCLF_GPU                    1: one GPU per executor, shared by its tasks [0]
#   PRODCLF_TASK_GPU_AMOUNT        GPU fraction per task [1 / executor cores]
#   PRODCLF_GPU_DISCOVERY_SCRIPT   path on the executors [./gpu-discovery.sh, shipped with
#                                  --files from infra/spark/gpu-discovery.sh]
#   PRODCLF_PROPERTIES_FILE        --properties-file (e.g. infra/spark/spark-defaults.conf)
#   PRODCLF_SPARK_ARGS             extra spark-submit options, split on spaces
#                                  (e.g. "--packages org.apache.hadoop:hadoop-aws:3.3.4")
#   PRODCLF_DRY_RUN                1: print the spark-submit command, do not run it
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

SUBMIT="${SPARK_HOME:+$SPARK_HOME/bin/}spark-submit"
MASTER="${PRODCLF_MASTER:-yarn}"
DEPLOY_MODE="${PRODCLF_DEPLOY_MODE:-client}"
ARCHIVE="${PRODCLF_ENV_ARCHIVE:-$ROOT/dist/prodclf-env.tar.gz}"
EXECUTOR_CORES="${PRODCLF_EXECUTOR_CORES:-4}"
EXECUTOR_MEMORY="${PRODCLF_EXECUTOR_MEMORY:-4g}"
EXECUTOR_OVERHEAD="${PRODCLF_EXECUTOR_MEMORY_OVERHEAD:-6g}"
DRIVER_MEMORY="${PRODCLF_DRIVER_MEMORY:-2g}"

if [[ "$ARCHIVE" != *://* && ! -f "$ARCHIVE" ]]; then
  echo "submit.sh: no environment archive at $ARCHIVE (run infra/package.sh first)" >&2
  exit 2
fi
case "$DEPLOY_MODE" in client|cluster) ;; *)
  echo "submit.sh: PRODCLF_DEPLOY_MODE must be client or cluster, not $DEPLOY_MODE" >&2
  exit 2 ;;
esac

FILES=()
ARGS=(
  --master "$MASTER"
  --deploy-mode "$DEPLOY_MODE"
  --driver-memory "$DRIVER_MEMORY"
  --executor-cores "$EXECUTOR_CORES"
  --executor-memory "$EXECUTOR_MEMORY"
  --conf "spark.executor.memoryOverhead=$EXECUTOR_OVERHEAD"
  # Unpacked as ./environment in every executor's (and a cluster-mode driver's) directory.
  --archives "$ARCHIVE#environment"
  --conf spark.pyspark.python=./environment/bin/python
  --conf spark.executorEnv.TF_CPP_MIN_LOG_LEVEL=2
)
if [[ -n "${PRODCLF_NUM_EXECUTORS:-}" ]]; then
  ARGS+=(--num-executors "$PRODCLF_NUM_EXECUTORS")
fi
if [[ -n "${PRODCLF_PROPERTIES_FILE:-}" ]]; then
  ARGS+=(--properties-file "$PRODCLF_PROPERTIES_FILE")
fi

if [[ "$DEPLOY_MODE" == client ]]; then
  # The driver runs here: it needs a local Python with the same prodclf version.
  DEFAULT_DRIVER_PYTHON="python3"
  if [[ -x "$ROOT/.venv/bin/python" ]]; then DEFAULT_DRIVER_PYTHON="$ROOT/.venv/bin/python"; fi
  ARGS+=(--conf "spark.pyspark.driver.python=${PRODCLF_DRIVER_PYTHON:-$DEFAULT_DRIVER_PYTHON}")
fi

# S3-compatible endpoint and region (not secrets) go to the executors and a cluster-mode
# driver too; credentials never do: use instance roles / IRSA / the nodes' AWS settings.
for var in AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL AWS_REGION AWS_DEFAULT_REGION; do
  if [[ -n "${!var:-}" ]]; then
    ARGS+=(--conf "spark.executorEnv.$var=${!var}")
    if [[ "$DEPLOY_MODE" == cluster ]]; then
      ARGS+=(--conf "spark.yarn.appMasterEnv.$var=${!var}"
             --conf "spark.kubernetes.driverEnv.$var=${!var}")
    fi
  fi
done

if [[ "${PRODCLF_GPU:-0}" == 1 ]]; then
  TASK_GPU="${PRODCLF_TASK_GPU_AMOUNT:-$(awk -v c="$EXECUTOR_CORES" 'BEGIN { printf "%.4g", 1 / c }')}"
  DISCOVERY="${PRODCLF_GPU_DISCOVERY_SCRIPT:-./gpu-discovery.sh}"
  if [[ -z "${PRODCLF_GPU_DISCOVERY_SCRIPT:-}" ]]; then
    FILES+=("$ROOT/infra/spark/gpu-discovery.sh")
  fi
  ARGS+=(
    --conf spark.executor.resource.gpu.amount=1
    --conf "spark.task.resource.gpu.amount=$TASK_GPU"
    --conf "spark.executor.resource.gpu.discoveryScript=$DISCOVERY"
    --conf spark.executor.resource.gpu.vendor=nvidia.com
  )
fi

if [[ -n "${PRODCLF_SPARK_ARGS:-}" ]]; then
  read -r -a EXTRA <<< "$PRODCLF_SPARK_ARGS"
  ARGS+=("${EXTRA[@]}")
fi

# In cluster mode the driver does not run here: ship a local --config file with it.
JOB_ARGS=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --config && "$DEPLOY_MODE" == cluster && $# -ge 2 && -f "$2" ]]; then
    FILES+=("$2")
    JOB_ARGS+=(--config "$(basename "$2")")
    shift 2
    continue
  fi
  JOB_ARGS+=("$1")
  shift
done

if [[ ${#FILES[@]} -gt 0 ]]; then
  ARGS+=(--files "$(IFS=,; echo "${FILES[*]}")")
fi

CMD=("$SUBMIT" "${ARGS[@]}" "$ROOT/jobs/tag_catalog.py" "${JOB_ARGS[@]}")
if [[ "${PRODCLF_DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
exec "${CMD[@]}"
