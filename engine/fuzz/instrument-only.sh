#!/usr/bin/env bash
# RUSTC_WRAPPER for `cargo afl build`: AFL++ coverage instrumentation (and cargo-afl's
# codegen-units=1, debug assertions and overflow checks) only for the crates that read the
# pipeline file: expflow's own, the YAML parser and JSON. Every other dependency (polars,
# candle, tokenizers, ...) builds as plain code at opt-level 1, which is much faster to
# compile on a small machine and does not dilute the coverage map.
set -euo pipefail
rustc="$1"
shift
name=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--crate-name" ]; then name="$a"; fi
  prev="$a"
done
case "$name" in
  expflow_*|pipeline|serde_saphyr|granit_parser|serde_json|"")
    exec "$rustc" "$@" ;;
esac
args=()
prev=""
for a in "$@"; do
  if [ "$prev" = "-C" ]; then
    case "$a" in
      passes=sancov*|llvm-args=-sanitizer-coverage*|codegen-units=1|debug-assertions|overflow_checks)
        unset 'args[${#args[@]}-1]'
        prev=""
        continue ;;
      opt-level=*)
        args+=("opt-level=1")
        prev=""
        continue ;;
    esac
  fi
  args+=("$a")
  prev="$a"
done
exec "$rustc" "${args[@]}"
