#!/usr/bin/env bash
# Runs ExpStar end to end on the demo data with a tiny model trained from scratch on CPU:
# data → retrieval → tiny model → SFT → DPO → retrieval-aware inference → scores.
# Installs what a fresh Debian/Ubuntu machine lacks (ffmpeg for the clips, WordNet for
# METEOR) when run as root; otherwise says exactly what to install. Extra arguments go to
# `expflow run` (for example `--set sft_lr=0.002`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
[ -f /usr/share/wordnet/index.noun ] || missing+=(wordnet-base)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "expflow's ExpStar demo needs: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust 1.89 or newer from https://rustup.rs" >&2
  exit 1
fi

cargo build -p expflow
bin="${CARGO_TARGET_DIR:-target}/debug/expflow"
"$bin" run pipelines/expstar.yaml "$@"
echo
echo "scores: pipelines/results/expstar/scores.json (and scores.csv); training curves:"
echo "pipelines/results/expstar/sft_metrics.parquet, dpo_metrics.parquet (expflow show …)"
