#!/usr/bin/env bash
# Says in one line what is missing before anything tries to link or load libtorch.
# Exit 0 when the venv, libtorch and demo model are in place; 1 with the fix otherwise.
cd "$(dirname "$0")/.."
TORCH_DIR=.venv/lib/python3.11/site-packages/torch
want=2.11.0
if [ ! -d .venv ]; then echo "pspace: .venv is missing: run 'make setup'"; exit 1; fi
if [ ! -f "$TORCH_DIR/lib/libtorch_cpu.so" ]; then echo "pspace: .venv has no libtorch ($TORCH_DIR/lib/libtorch_cpu.so): run 'rm -rf .venv && make setup'"; exit 1; fi
have=$(sed -n "s/^__version__ = '\(.*\)'$/\1/p" "$TORCH_DIR/version.py" 2>/dev/null | cut -d+ -f1)
if [ "$have" != "$want" ]; then echo "pspace: .venv has torch ${have:-unknown}, expected $want (tch 0.24): run 'rm -rf .venv && make setup'"; exit 1; fi
if [ ! -f .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then echo "pspace: the demo model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf is missing: run 'make setup'"; exit 1; fi
exit 0
