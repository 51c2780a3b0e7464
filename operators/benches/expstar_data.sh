#!/usr/bin/env bash
# The ExpStar data stages over a synthetic tree (issue 3's benchmark; figures in README.md and
# docs/expstar.md): wall time, CPU time and peak memory of
#   1. `expflow synth expstar` (the raw tree, videos made with ffmpeg),
#   2. the first run of pipelines/expstar.yaml on it,
#   3. the re-run after one step's English annotation changes (rows rebuilt, no clip cut),
#   4. the re-run after one step's start time changes (one clip cut again).
#
# usage: operators/benches/expstar_data.sh [EXPFLOW_BINARY] [WORK_DIR]
#   SUBJECTS=21 EXPERIMENTS=50 STEPS=5 JOBS=2 by default; build the binary with
#   `cargo build --release -p expflow` first.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/expflow}"
work="${2:-/tmp/expflow-expstar-bench}"
subjects="${SUBJECTS:-21}" experiments="${EXPERIMENTS:-50}" steps="${STEPS:-5}" jobs="${JOBS:-2}"
fmt='%e s wall, %U s user, %S s sys, %M KB peak RSS'

echo "tree: $subjects subjects x $experiments experiments x $steps steps; jobs $jobs; $(nproc) cores"
# SKIP_FIRST=1 re-uses a tree and workspace left in WORK_DIR by an earlier call.
if [ -z "${SKIP_FIRST:-}" ]; then
  rm -rf "$work"
  mkdir -p "$work"
  /usr/bin/time -f "synth: $fmt" "$bin" synth expstar --subjects "$subjects" \
    --experiments "$experiments" --steps "$steps" --seed 1 "$work/raw" >/dev/null
fi

# The repository's pipeline, pointed at the synthetic tree (the other inputs stay the demo's).
sed -e "s|raw: expstar-demo/raw|raw: $work/raw|" \
    -e "s|: expstar-demo/|: $repo/pipelines/expstar-demo/|" \
    "$repo/pipelines/expstar.yaml" > "$work/expstar.yaml"

run() {
  /usr/bin/time -o "$work/$2.time" -f "$1: $fmt" "$bin" --workspace "$work/ws" run \
    "$work/expstar.yaml" --jobs "$jobs" >"$work/$2.log" 2>&1
  cat "$work/$2.time"
  grep -E "^run " "$work/$2.log" || true
  "$bin" --workspace "$work/ws" log clips 2>/dev/null | grep -E "cut" || true
}

if [ -z "${SKIP_FIRST:-}" ]; then
  run "first run" first
fi

# One step's English text (an annotation) changes: the rows of that step are rebuilt.
step_file="$(find "$work/raw/dataset" -name '*.json' | sort | sed -n 1p)"
python3 - "$step_file" <<'PY'
import json, sys
p = sys.argv[1]
doc = json.load(open(p, encoding="utf-8"))
doc["steps"][0]["step_en"] += " (edited)"
json.dump(doc, open(p, "w", encoding="utf-8"), ensure_ascii=False, indent=2)
PY
run "re-run after one step_en edit" text-edit

# One step's start time moves by one second: that step's clip is cut again.
python3 - "$step_file" <<'PY'
import json, sys
p = sys.argv[1]
doc = json.load(open(p, encoding="utf-8"))
h, m, s = (int(x) for x in doc["steps"][1]["startTime"].split(":"))
t = h * 3600 + m * 60 + s + 1
doc["steps"][1]["startTime"] = f"{t // 3600}:{t // 60 % 60:02}:{t % 60:02}"
json.dump(doc, open(p, "w", encoding="utf-8"), ensure_ascii=False, indent=2)
PY
run "re-run after one startTime edit" time-edit
