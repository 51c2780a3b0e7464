#!/usr/bin/env bash
# Submit-to-record overhead of the Slurm executor: a chain of N trivial nodes (one job
# each, submitted one after another) and a matrix of M trivial points (one job array), each
# run on Slurm and locally. Needs a running Slurm (scripts/slurm-ci.sh) and a built expflow.
# With S3_ENDPOINT (an S3 server with a bucket `expflow-bench`, AWS_* credentials set), the
# object data mode too (`--data object`, jobs in their own workspace under the temp dir).
#   scripts/slurm-overhead.sh [EXPFLOW] [N] [M]
set -euo pipefail
bin="${1:-target/debug/expflow}"; bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
n="${2:-10}"; m="${3:-100}"
d="$(mktemp -d)"; trap 'rm -rf "$d"' EXIT
cd "$d"
{
  echo "pipeline: chain"; echo "nodes:"
  echo "  n1: {op: command, out: {o: file}, params: {run: 'echo 1 > \${out.o}'}}"
  for i in $(seq 2 "$n"); do
    echo "  n$i: {op: command, in: {x: n$((i-1)).o}, out: {o: file}, params: {run: 'cat \${in.x} > \${out.o}; echo $i >> \${out.o}'}}"
  done
} > chain.yaml
{
  echo "pipeline: fan"; echo "nodes:"
  echo "  p: {op: command, matrix: {i: [$(seq -s, 1 "$m")]}, out: {o: file}, params: {run: 'echo \${matrix.i} > \${out.o}'}}"
} > fan.yaml
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for ex in local slurm; do
  for p in chain fan; do
    rm -rf .expflow; mkdir -p .expflow
    printf 'slurm:\n  poll_interval_s: %s\n' "${POLL:-1}" > .expflow/config.yaml
    t=$(secs "$bin" run "$p.yaml" --executor "$ex")
    count=$([ "$p" = chain ] && echo "$n" || echo "$m")
    echo "$ex $p: $count nodes in $t s ($(echo "scale=3; $t / $count" | bc) s per node)"
  done
done
if [ -n "${S3_ENDPOINT:-}" ]; then
  export EXPFLOW_CONFIG_DIR="$d/config"
  for p in chain fan; do
    rm -rf .expflow "$d/worker"; mkdir -p .expflow
    printf 'slurm:\n  poll_interval_s: %s\n  worker_workspace: %s\n' "${POLL:-1}" "$d/worker" > .expflow/config.yaml
    "$bin" --workspace .expflow remote add bench "s3://expflow-bench/overhead-$$-$p" --endpoint "$S3_ENDPOINT" >/dev/null
    t=$(secs "$bin" run "$p.yaml" --executor slurm --data object --remote bench)
    count=$([ "$p" = chain ] && echo "$n" || echo "$m")
    echo "slurm (object data) $p: $count nodes in $t s ($(echo "scale=3; $t / $count" | bc) s per node)"
  done
fi
