# pspace: the two commands are `make demo` and `make test`; both set up what they need first.
.PHONY: setup demo test lint fmt build bench clean-venv

setup:
	@bash scripts/setup.sh

demo: setup
	@scripts/check_env.sh
	target/release/pspace run

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
