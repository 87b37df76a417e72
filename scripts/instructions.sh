#!/usr/bin/env bash
# User-space instructions per proxied request, Tollgate against nginx, counted by valgrind's
# callgrind: a count, not a time, so it repeats to within a fraction of a percent whatever else
# the machine is doing (docs/BENCHMARKS.md, "Instructions per request").
#
#   ./scripts/instructions.sh [GATEWAY_BIN] [REQUESTS]
#
# GATEWAY_BIN defaults to target/release/tollgate (build it with
# `cargo build --release --bins --features testkit`); REQUESTS defaults to 2000. With KEEP=1
# the callgrind files are kept for `callgrind_annotate`.
#
# An nginx serving a fixed chat completion is the upstream (not counted). Each proxy (Tollgate
# with the minimal config, the same Tollgate with the governed config, nginx as a bare reverse
# proxy with its access log) runs under callgrind twice: started, sent 0 requests, stopped; and
# started, sent REQUESTS non-stream chat requests one after another on one keep-alive
# connection, stopped. Instructions per request = (Ir with REQUESTS - Ir with 0) / REQUESTS:
# start-up and shutdown cancel out. Kernel time (the socket work both proxies pay) is not in it.
# Needs valgrind, nginx and python3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=$(realpath "${1:-target/release/tollgate}")
N=${2:-2000}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in valgrind callgrind_annotate python3 "$NGINX"; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool not found" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "instructions.sh: $BIN not found (cargo build --release)" >&2; exit 1; }

DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $DIR (callgrind_annotate $DIR/cg.tollgate.$N)" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user root;"

nginx_conf() { # DIR PORT BODY
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
$USER_LINE
daemon off;
master_process off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    $3
}
EOF
}

# The upstream: a fixed chat completion with usage.
UP_PORT=$(free_port)
ANSWER='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the fixed upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}'
nginx_conf "$DIR/up" "$UP_PORT" "access_log off; server { listen 127.0.0.1:$UP_PORT; location / { default_type application/json; return 200 '$ANSWER'; } }"
"$NGINX" -c "$DIR/up/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)

KEY=sk-instructions-bench
KEY_SHA=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
gateway_conf() { # FILE GOVERNED
    local limits="" extra=""
    if [ "$2" = 1 ]; then
        limits=", requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 100000, budget: { amount_usd: 1000000000, period: monthly }"
        extra="store:
  url: \"sqlite://$DIR/usage.db?mode=rwc\"
  usage: { spill_path: $DIR/spill.jsonl }
prices:
  bench: { input_per_million: 1.0, output_per_million: 2.0 }"
    fi
    cat >"$1" <<EOF
upstreams:
  up: { provider: openai, base_url: "http://127.0.0.1:$UP_PORT/v1" }
models:
  bench: { targets: [ { upstream: up } ] }
teams:
  t: { models: ["*"]$limits }
keys:
  - { name: bench, team: t, sha256: $KEY_SHA }
$extra
EOF
}
gateway_conf "$DIR/minimal.yaml" 0
gateway_conf "$DIR/governed.yaml" 1

# Send N requests on one keep-alive connection; fail on any answer but 200.
drive() { # PORT N
    python3 - "$1" "$2" "$KEY" <<'EOF'
import http.client, json, sys, time
port, n, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = json.dumps({"model": "bench", "messages": [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Say hello in five words, please."}], "max_tokens": 32})
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60); c.connect(); break
    except OSError:
        if time.time() > deadline: sys.exit("no listener on %d" % port)
        time.sleep(0.2)
for i in range(n):
    c.request("POST", "/v1/chat/completions", body,
              {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    if r.status != 200: sys.exit("request %d: %d %s" % (i, r.status, data[:200]))
EOF
}

# Ir of one run: start under callgrind, drive N requests, stop (SIGTERM / SIGQUIT), read the total.
measure() { # NAME N
    local name=$1 n=$2 out="$DIR/cg.$1.$2" port
    port=$(free_port)
    case $name in
        nginx)
            nginx_conf "$DIR/px" "$port" "access_log $DIR/px/access.log; upstream up { server 127.0.0.1:$UP_PORT; keepalive 16; } server { listen 127.0.0.1:$port; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"
            valgrind --tool=callgrind --callgrind-out-file="$out" "$NGINX" -c "$DIR/px/nginx.conf" >"$DIR/$name.log" 2>&1 &
            ;;
        tollgate|governed)
            local cfg="$DIR/minimal.yaml"
            [ "$name" = governed ] && cfg="$DIR/governed.yaml" && rm -f "$DIR/usage.db"*
            valgrind --tool=callgrind --callgrind-out-file="$out" \
                "$BIN" serve --config "$cfg" --listen "127.0.0.1:$port" >"$DIR/$name.log" 2>&1 &
            ;;
    esac
    local pid=$!
    drive "$port" 1 >/dev/null   # wait until it answers (one request, in both runs)
    drive "$port" "$n"
    if [ "$name" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" || true
    local total calib
    total=$(grep -h '^summary:\|^totals:' "$out"* | head -1 | awk '{print $2}')
    # quanta (the response cache's clock) calibrates itself at start for a stretch of wall-clock
    # time, so its count varies from run to run (±2,000 per request at N = 2,000): taken out.
    calib=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
        | awk '/quanta::Calibration::calibrate \[/ { gsub(",", "", $1); print $1; exit }')
    echo $(( total - ${calib:-0} ))
}

printf '%-10s %14s %14s %10s\n' proxy "Ir (0)" "Ir ($N)" "Ir/request"
declare -A PER
for name in nginx tollgate governed; do
    base=$(measure "$name" 0)
    load=$(measure "$name" "$N")
    PER[$name]=$(( (load - base) / N ))
    printf '%-10s %14s %14s %10s\n' "$name" "$base" "$load" "${PER[$name]}"
done
awk -v t="${PER[tollgate]}" -v g="${PER[governed]}" -v n="${PER[nginx]}" \
    'BEGIN { printf "tollgate / nginx: %.2fx   governed / nginx: %.2fx   governed / tollgate: %.2fx\n", t/n, g/n, g/t }'
