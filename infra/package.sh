#!/usr/bin/env bash
# Build dist/prodclf-env.tar.gz: a packed virtualenv with prodclf and its pinned
# dependencies, shipped to the executors with `spark-submit --archives` (Spark's
# "Using Virtualenv" approach with venv-pack; see infra/README.md).
#
#   infra/package.sh [--spark 3.5|4] [--gpu] [--python PYTHON] [--python-prefix PREFIX]
#                    [--output FILE]
#
#   --spark 3.5      (default) Spark 3.5 clusters: extras tf,train, -c constraints.txt
#                    (tag, evaluate and train)
#   --spark 4        Spark 4.x clusters: extra tf, -c constraints-spark4.txt (tag and
#                    evaluate; no petastorm, so no training)
#   --gpu            tensorflow[and-cuda]==2.21.0 instead of tensorflow-cpu (GPU executors)
#   --python PYTHON  interpreter the environment is built on (default: $PYTHON, python3.11,
#                    python3). venv-pack does not pack the interpreter itself: executors need
#                    the same Python version at the same path (build on the executors' image).
#   --python-prefix PREFIX  where that Python lives on the executors, if elsewhere
#                    (venv-pack --python-prefix; e.g. /usr for Debian's python3.11)
#   --output FILE    default dist/prodclf-env.tar.gz (dist/prodclf-env-spark4.tar.gz with
#                    --spark 4)
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU=0
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
PYTHON_PREFIX=""
SPARK="3.5"
OUTPUT=""
VENV_PACK="venv-pack==0.2.0"
TF_VERSION="2.21.0"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --spark) SPARK="${2:?--spark needs 3.5 or 4}"; shift ;;
    --gpu) GPU=1 ;;
    --python) PYTHON="${2:?--python needs a value}"; shift ;;
    --python-prefix) PYTHON_PREFIX="${2:?--python-prefix needs a value}"; shift ;;
    --output|-o) OUTPUT="${2:?--output needs a value}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "package.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Which environment: its extras and the constraints file that pins it.
case "$SPARK" in
  3.5) EXTRAS="tf,train"; CONSTRAINTS="constraints.txt"; OUTPUT="${OUTPUT:-dist/prodclf-env.tar.gz}" ;;
  4) EXTRAS="tf"; CONSTRAINTS="constraints-spark4.txt"
     OUTPUT="${OUTPUT:-dist/prodclf-env-spark4.tar.gz}" ;;
  *) echo "package.sh: --spark must be 3.5 or 4, not $SPARK" >&2; exit 2 ;;
esac

if [[ -z "$PYTHON" ]] || ! command -v "$PYTHON" >/dev/null; then
  echo "package.sh: no Python interpreter (set --python or PYTHON)" >&2
  exit 2
fi

cd "$ROOT"
case "$OUTPUT" in /*) ;; *) OUTPUT="$ROOT/$OUTPUT" ;; esac
BUILD="$ROOT/dist/.build"
ENV_DIR="$BUILD/prodclf-env"
rm -rf "$BUILD"
mkdir -p "$BUILD/wheels" "$(dirname "$OUTPUT")"

echo "==> creating a fresh virtualenv with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
"$PYTHON" -m venv "$ENV_DIR"
PIP=("$ENV_DIR/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade "pip>=24"

echo "==> building the prodclf wheel"
# From a clean copy: an in-tree build would leave build/ behind, and stale modules there
# can end up in later wheels.
mkdir -p "$BUILD/src"
cp -R pyproject.toml prodclf "$BUILD/src/"
if [[ -f README.md ]]; then cp README.md "$BUILD/src/"; fi
find "$BUILD/src" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" wheel -q --no-deps -w "$BUILD/wheels" "$BUILD/src"
WHEEL="$(ls "$BUILD"/wheels/prodclf-*.whl)"

# The environment's extras of pyproject.toml (`tf`: TensorFlow; `train`: petastorm and its
# Spark 3.5 / pyarrow<13 pins); with --gpu, tensorflow-cpu is swapped for
# tensorflow[and-cuda] at the same version.
mapfile -t TF_EXTRA < <("$ENV_DIR/bin/python" - "$GPU" "$TF_VERSION" "$EXTRAS" <<'EOF'
import sys, tomllib
gpu, version, names = sys.argv[1] == "1", sys.argv[2], sys.argv[3].split(",")
with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
for req in [r for name in names for r in extras[name]]:
    if gpu and req.replace("_", "-").startswith("tensorflow-cpu"):
        req = f"tensorflow[and-cuda]=={version}"
    print(req)
EOF
)

echo "==> installing prodclf for Spark $SPARK with ${TF_EXTRA[*]} (-c $CONSTRAINTS)"
"${PIP[@]}" install -q --no-cache-dir -c "$CONSTRAINTS" "$WHEEL" "${TF_EXTRA[@]}" "$VENV_PACK"
"$ENV_DIR/bin/python" -c 'import prodclf, pyspark, tensorflow; print("    prodclf", prodclf.__version__, "pyspark", pyspark.__version__, "tensorflow", tensorflow.__version__)'

echo "==> packing"
rm -f "$OUTPUT"
# pyspark's jars (~300 MB) are left out: executors and drivers run the cluster's own
# Spark JVM (3.5.x or 4.x, as chosen by --spark); only the Python side of the environment
# is used from the archive.
PACK=(-p "$ENV_DIR" -o "$OUTPUT" --quiet --exclude "lib/python*/site-packages/pyspark/jars/*")
if [[ -n "$PYTHON_PREFIX" ]]; then PACK+=(--python-prefix "$PYTHON_PREFIX"); fi
"$ENV_DIR/bin/venv-pack" "${PACK[@]}"
chmod 644 "$OUTPUT"
rm -rf "$BUILD"
echo "==> $OUTPUT ($(du -h "$OUTPUT" | cut -f1))"
