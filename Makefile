# pspace: the two commands are `make demo` and `make test`; both set up what they need first.
.PHONY: setup demo test reproduce lint fmt build bench clean-venv dryrun-data image image-cpu

setup:
	@bash scripts/setup.sh

demo: setup
	@scripts/check_env.sh
	target/release/pspace run

# The original run's published behaviour numbers from its per-question marker hits (bundled in
# experiments/data): result.json, report.md, report.html and the figures in $(REPRODUCE_OUT)/.
# tests/tests/analyze.rs runs this recipe's command line and checks the numbers.
REPRODUCE_OUT ?= reproduce
reproduce: setup
	target/release/pspace analyze behavior --hits experiments/data/reference_marker_hits.json --personas experiments/data/personas.json --out $(REPRODUCE_OUT)

# Tests run in the release profile: they share the compiled dependencies (tch, tokenizers, ...)
# with the binary that setup builds, and the numeric tests run fast.
test: setup lint
	cargo test --release --locked --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --release --locked --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

build: setup

bench: setup
	target/release/pspace doctor

# The training sets of experiments/issue205-dryrun.toml (6,000 + 6,000 rows, 14 MB, generated
# from seed 205; node/src/dryrun_data.rs documents the length distributions).
dryrun-data: setup
	target/release/pspace dryrun-data --out experiments/data/dryrun --seed 205

# The container image of deploy/ (deploy/Dockerfile). `image`: CUDA runtime base and libtorch with
# CUDA from the PyTorch wheel (pulls the base image and ~5 GB of wheels). `image-cpu`: CPU only,
# on a base made from this machine's libraries with `docker import` (no registry needed: the
# `containers` test builds this one). IMAGE names the result.
IMAGE ?= pspace:latest
image: setup
	deploy/image/context.sh gpu .image/gpu
	docker build -f deploy/Dockerfile -t $(IMAGE) .image/gpu

image-cpu: setup
	deploy/image/rootfs.sh .image/rootfs
	tar -C .image/rootfs -c . | docker import - pspace-rootfs:local
	deploy/image/context.sh cpu .image/cpu
	docker build -f deploy/Dockerfile --build-arg BASE=pspace-rootfs:local -t $(IMAGE) .image/cpu
