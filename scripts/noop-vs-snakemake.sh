#!/usr/bin/env bash
# The no-op re-run of a binary tree of N `command` stages (default 1,000; stage i reads stage
# (i-1)/2), through the expflow binary and through Snakemake on the same tree, side by side:
# one first run each, then R re-runs each (default 10), alternating. Prints every re-run's
# wall time and the medians. Usage:
#   scripts/noop-vs-snakemake.sh [EXPFLOW_BINARY] [N] [R]
# Snakemake comes from PyPI into a venv under ~/.cache (SNAKEMAKE=path to use another).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/expflow}")"
n="${2:-1000}"
reps="${3:-10}"
[ -x "$bin" ] || { echo "build it first: cargo build --release -p expflow (or pass the binary)" >&2; exit 1; }
smk="${SNAKEMAKE:-$HOME/.cache/expflow-venv/snakemake/bin/snakemake}"
if [ ! -x "$smk" ]; then
  python3 -m venv "$HOME/.cache/expflow-venv/snakemake"
  "$HOME/.cache/expflow-venv/snakemake/bin/pip" install --quiet snakemake
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# expflow: one node per stage.
{
  echo "pipeline: tree"
  echo "nodes:"
  echo "  s0: {op: command, out: {f: file}, params: {run: 'echo 0 > \${out.f}'}}"
  for ((i = 1; i < n; i++)); do
    echo "  s$i: {op: command, in: {p: s$(((i - 1) / 2)).f}, out: {f: file}, params: {run: 'cat \${in.p} > \${out.f}; echo $i >> \${out.f}'}}"
  done
} >"$work/tree.yaml"

# Snakemake: one rule, one job per stage.
mkdir -p "$work/smk"
cat >"$work/smk/Snakefile" <<SMK
N = $n
rule all:
    input: expand("s/{i}.txt", i=range(N))
def parent(w):
    i = int(w.i)
    return [] if i == 0 else [f"s/{(i - 1) // 2}.txt"]
rule stage:
    input: parent
    output: "s/{i}.txt"
    shell: "cat {input} /dev/null > {output}; echo {wildcards.i} >> {output}"
SMK

# Timed with bash's own clock and absolute paths: no `date` process and no subshell inside
# the timed span (they added 2-3 ms to each side).
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

(cd "$work" && "$bin" run tree.yaml --jobs 2 >/dev/null 2>&1)
(cd "$work/smk" && "$smk" --cores 2 --quiet all >/dev/null 2>&1)
last=$((n - 1))
[ -f "$work/smk/s/$last.txt" ] || { echo "snakemake's first run did not finish" >&2; exit 1; }
[ "$(grep -c . "$work/smk/s/$last.txt")" -gt 1 ] || [ "$n" -eq 1 ] || { echo "snakemake's tree is wrong" >&2; exit 1; }
: >"$work/e.txt"
: >"$work/s.txt"
for ((r = 0; r < reps; r++)); do
  t0=$EPOCHREALTIME; "$bin" run "$work/tree.yaml" --jobs 2 >/dev/null 2>&1; t1=$EPOCHREALTIME
  echo "$t1 - $t0" | bc -l >>"$work/e.txt"
  t0=$EPOCHREALTIME; "$smk" --cores 2 --quiet all -d "$work/smk" -s "$work/smk/Snakefile" >/dev/null 2>&1; t1=$EPOCHREALTIME
  echo "$t1 - $t0" | bc -l >>"$work/s.txt"
done
echo "expflow re-runs (s):   $(tr '\n' ' ' <"$work/e.txt")"
echo "snakemake re-runs (s): $(tr '\n' ' ' <"$work/s.txt")"
echo "median: expflow $(median <"$work/e.txt") s, snakemake $(median <"$work/s.txt") s ($n stages)"
