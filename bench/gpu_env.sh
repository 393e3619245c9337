# Sourced by the bench scripts that run on the GPU machine: libtorch and python from its torch
# venv (GPU.md: /opt/torch/.venv; TORCH_VENV overrides, PSPACE_LIBTORCH_LIB wins over both), the
# pspace binary (PSPACE_BIN), and DEST, where results go ($OUT on the device machine, else
# bench/results).
TORCH_VENV=${TORCH_VENV:-/opt/torch/.venv}
lib=$(ls -d "$TORCH_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)
[ -n "$lib" ] && export PSPACE_LIBTORCH_LIB=${PSPACE_LIBTORCH_LIB:-$lib}
PY=python3
[ -x "$TORCH_VENV/bin/python" ] && PY="$TORCH_VENV/bin/python"
BIN=${PSPACE_BIN:-target/release/pspace}
DEST=${OUT:-bench/results}
mkdir -p "$DEST"
