#!/usr/bin/env bash
# Prepares the build context of deploy/Dockerfile in OUT (removed first):
#   opt/pspace/target/release/{pspace,pspace-core}   the release binaries (built if missing)
#   opt/pspace/.venv/.../torch/{version.py,lib/}      libtorch 2.11 from the PyTorch wheel
#   opt/pspace/.venv/.../nvidia/                       the CUDA runtime libraries it loads
#   opt/pspace/.cache/models/<demo model>              the demo model, for a smoke run
#   opt/pspace/{experiments,tests/data,engine/tests/fixtures/tiny-qwen2}  specs and data
#   scratch/, tmp/                                     writable folders
# VARIANT cpu: only the libraries pspace-core loads from the venv (libtorch_cpu, libc10,
# libgomp, cudart, cupti: about 0.5 GB). VARIANT gpu: a full `pip install torch==2.11.0` (with
# its CUDA wheels, about 5 GB) staged under OUT/.stage, all of torch/lib and nvidia/.
#
# usage: deploy/image/context.sh cpu|gpu OUT
set -euo pipefail
variant=${1:?usage: context.sh cpu|gpu OUT}
out=${2:?usage: context.sh cpu|gpu OUT}
root=$(cd "$(dirname "$0")/../.." && pwd)
site=lib/python3.11/site-packages
model=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

[ -x "$root/target/release/pspace-core" ] || (cd "$root" && cargo build --release --locked -q -p pspace-node)
[ -f "$root/$model" ] || { echo "context.sh: $model is missing: run 'make setup'" >&2; exit 1; }

rm -rf "$out"
p=$out/opt/pspace
mkdir -p "$p/target/release" "$p/.cache/models" "$p/tests/data" "$p/engine/tests/fixtures" \
  "$p/.venv/$site/torch/lib" "$out/scratch" "$out/tmp"
chmod 1777 "$out/tmp"
cp "$root/target/release/pspace" "$root/target/release/pspace-core" "$p/target/release/"
cp "$root/$model" "$p/.cache/models/"
cp -r "$root/experiments" "$p/"
cp "$root/tests/data/"*.toml "$p/tests/data/"
cp -r "$root/engine/tests/fixtures/tiny-qwen2" "$p/engine/tests/fixtures/"

case "$variant" in
  cpu)
    venv=$root/.venv/$site
    cp "$venv/torch/version.py" "$p/.venv/$site/torch/"
    # Exactly what the dynamic loader resolves from the venv for pspace-core.
    LD_LIBRARY_PATH="$venv/torch/lib:$venv/nvidia/cu13/lib" ldd "$root/target/release/pspace-core" \
      | awk '$3 ~ /\.venv/ {print $3}' | while read -r lib; do
          rel=${lib#*"$site"/}
          mkdir -p "$p/.venv/$site/$(dirname "$rel")"
          cp -L "$lib" "$p/.venv/$site/$rel"
        done
    ;;
  gpu)
    stage=$out/.stage
    python3.11 -m pip install -q --disable-pip-version-check --target "$stage" torch==2.11.0
    cp "$stage/torch/version.py" "$p/.venv/$site/torch/"
    cp -r "$stage/torch/lib/." "$p/.venv/$site/torch/lib/"
    cp -r "$stage/nvidia" "$p/.venv/$site/"
    rm -rf "$stage"
    ;;
  *) echo "context.sh: VARIANT must be cpu or gpu, not $variant" >&2; exit 2 ;;
esac
du -sh "$out" | awk '{print "context.sh: " $1 " in " ENVIRON["out"]}' out="$out"
