#!/usr/bin/env bash
# Measures push and pull throughput of the shared cache against a local S3 server (moto, as
# .ci/run starts it): one 256 MiB blob, and a directory of 2,000 files of 4 KiB. Prints one
# line per measurement. Usage: scripts/remote-throughput.sh [EXPFLOW_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/expflow}")"
[ -x "$bin" ] || { echo "build it first: cargo build --release -p expflow (or pass the binary)" >&2; exit 1; }
command -v moto_server >/dev/null 2>&1 || python3 -m pip install --quiet 'moto[server]'
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done
python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/bench', method='PUT'))"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test EXPFLOW_CONFIG_DIR="$work/cfg"
cat >"$work/bench.yaml" <<'YAML'
pipeline: bench
nodes:
  big:
    op: command
    out: {f: file}
    params: {run: "head -c 256M /dev/urandom > ${out.f}"}
  many:
    op: command
    out: {d: dir}
    params: {run: "for i in $(seq 1 2000); do head -c 4096 /dev/urandom > ${out.d}/f$i; done"}
YAML
now() { date +%s.%N; }
rate() { python3 -c "import sys; b,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{b/t/1048576:.1f} MiB/s, {t:.2f} s')" "$1" "$2"; }
for node in big many; do
  a="$work/a-$node" b="$work/b-$node"
  mkdir -p "$a" "$b"
  cp "$work/bench.yaml" "$a/" && cp "$work/bench.yaml" "$b/"
  url="s3://bench/$node"
  (cd "$a" && "$bin" run bench.yaml --target "$node" >/dev/null 2>&1 && "$bin" --workspace .expflow remote add team "$url" --endpoint "http://127.0.0.1:$port" >/dev/null)
  (cd "$b" && "$bin" --workspace .expflow remote add team "$url" --endpoint "http://127.0.0.1:$port" >/dev/null)
  t0="$(now)"; out="$(cd "$a" && "$bin" --workspace .expflow push --json 2>/dev/null)"; t1="$(now)"
  bytes="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_uploaded"])' <<<"$out")"
  blobs="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["blobs_uploaded"])' <<<"$out")"
  echo "push $node ($blobs blobs, $bytes bytes): $(rate "$bytes" "$(python3 -c "print($t1-$t0)")")"
  t0="$(now)"; (cd "$b" && "$bin" pull bench.yaml --target "$node" >/dev/null 2>&1); t1="$(now)"
  echo "pull $node ($blobs blobs, $bytes bytes): $(rate "$bytes" "$(python3 -c "print($t1-$t0)")")"
done
