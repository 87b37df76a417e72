#!/usr/bin/env bash
# A long batch against the built-in mock, with the figures docs/BATCH.md asks for: lines per
# second, the gateway's peak RSS (run it with two sizes: it must not grow with the input), and
# the P99 latency of interactive requests without and during the batch. Not part of the test
# command; run it on a quiet machine.
#
#   cargo build --release
#   ./scripts/batch-run.sh 100000          # lines (default 100000)
#
# Environment: TOLLGATE (the binary, default target/release/tollgate), CONCURRENCY (lines in
# flight, default 64), PROBES (interactive requests per latency figure, default 2000),
# GATEWAY_CPU / CLIENT_CPUS (taskset CPU lists, default 1 and 0).
set -euo pipefail
N=${1:-100000}
BIN=${TOLLGATE:-target/release/tollgate}
CONCURRENCY=${CONCURRENCY:-64}
PROBES=${PROBES:-2000}
GATEWAY_CPU=${GATEWAY_CPU:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release first" >&2; exit 64; }
DIR=$(mktemp -d)
trap 'kill "$GW" 2>/dev/null || true; rm -rf "$DIR"' EXIT

cat > "$DIR/cfg.yaml" <<YAML
server: { listen: 127.0.0.1:0, max_in_flight: 4096 }
upstreams:
  mock: { provider: mock, mock: { latency: 5ms } }
models:
  mock-gpt: { targets: [ { upstream: mock } ] }
teams:
  demo: { models: ["*"] }
keys:
  - { name: demo, team: demo, sha256: 179510ee3e248a7bfae1a518d344461ddef0e32bbf53b40845f2d3e157c5973f }
store:
  url: "sqlite://$DIR/tollgate.db?mode=rwc"
  usage: { spill_path: $DIR/spill.jsonl }
batch:
  files_dir: $DIR/files
  concurrency: $CONCURRENCY
  max_lines: $N
  max_file_bytes: 1073741824
YAML

echo "making $N lines" >&2
python3 - "$N" > "$DIR/in.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "mock-gpt", "messages": [{"role": "user", "content": f"line {i} of the night run"}]}}))
PY

RUST_LOG=warn taskset -c "$GATEWAY_CPU" "$BIN" serve --config "$DIR/cfg.yaml" \
  --addr-file "$DIR/addr" 2>"$DIR/gateway.log" &
GW=$!
for _ in $(seq 100); do [ -s "$DIR/addr" ] && break; sleep 0.1; done
URL="http://$(cat "$DIR/addr")"

probe() { # P50 and P99 of sequential interactive requests, in ms: $PROBES of them, or fewer if
          # the file $1 appears first (the batch ended)
  taskset -c "$CLIENT_CPUS" python3 - "$URL" "$PROBES" "${1:-}" <<'PY'
import http.client, json, os, sys, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1]); n = int(sys.argv[2]); stop = sys.argv[3]
c = http.client.HTTPConnection(u.hostname, u.port)
body = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "interactive"}]})
h = {"authorization": "Bearer sk-tollgate-demo", "content-type": "application/json"}
t = []
for _ in range(n):
    if stop and os.path.exists(stop):
        break
    s = time.perf_counter(); c.request("POST", "/v1/chat/completions", body, h)
    r = c.getresponse(); r.read(); t.append((time.perf_counter() - s) * 1000)
    assert r.status == 200, r.status
t.sort()
print(f"p50 {t[len(t)//2]:.2f} ms, p99 {t[int(len(t)*0.99)]:.2f} ms ({len(t)} requests)")
PY
}

echo "interactive, no batch:     $(probe)"
START=$(date +%s.%N)
TOLLGATE_URL=$URL TOLLGATE_API_KEY=sk-tollgate-demo taskset -c "$CLIENT_CPUS" \
  "$BIN" batch submit "$DIR/in.jsonl" --wait -o "$DIR/out.jsonl" > "$DIR/submit.log" &
SUBMIT=$!
# Interactive requests while the batch runs (from one second in until it ends).
(sleep 1; probe "$DIR/batch-ended" > "$DIR/probe.txt") &
PROBE=$!
wait "$SUBMIT"
END=$(date +%s.%N)
touch "$DIR/batch-ended"
wait "$PROBE"
echo "interactive, during batch: $(cat "$DIR/probe.txt")"
LINES=$(wc -l < "$DIR/out.jsonl")
echo "lines: $LINES of $N in $(python3 -c "print(f'{$END-$START:.1f}')") s:" \
  "$(python3 -c "print(f'{$LINES/($END-$START):.0f}')") lines/s (upload and validation included)"
echo "gateway peak RSS: $(grep VmHWM /proc/$GW/status | awk '{print $2/1024 " MiB"}')"
tail -1 "$DIR/submit.log"
