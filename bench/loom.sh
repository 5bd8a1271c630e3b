#!/usr/bin/env bash
# The tracker's loom model (crates/lastcall/src/tracker/loom.rs): every interleaving of its
# threads up to LOOM_MAX_PREEMPTIONS preemptions (default 2). Outside `cargo test --workspace`:
# it needs `--cfg lastcall_loom`, which swaps the tracker's std sync types for loom's, and its own
# target directory so the normal build is not rebuilt.
#   bash bench/loom.sh [test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg lastcall_loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2}
export CARGO_TARGET_DIR=${LOOM_TARGET_DIR:-target/loom}
exec cargo test -p lastcall --lib --release -- "tracker::loom::${1:-}" --test-threads=1
