#!/usr/bin/env bash
# Screenshots of every console page into docs/console/*.png:
#   ./scripts/screenshots.sh [output directory, default docs/console]
#
# Serves examples/quickstart.yaml (a debug build of the binary, its SQLite store in a temporary
# directory, a throwaway admin key; plus an unused pool of two dummy tokens, so that the
# credentials page has something to show) and drives the console in the same headless Chromium as the
# browser test (tests/python/console_browser.py --screenshots): it signs in, makes a second team
# and a key, sends requests with the key, and saves one PNG per page. The day of history behind
# the charts is seeded into the temporary store (synthetic rows, marked so in docs/CONSOLE.md);
# the last hour's requests are real. Needs chromium, chromium-driver and selenium in
# target/pyvenv: ./scripts/test.sh installs all three.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=$(realpath -m "${1:-docs/console}")
PY=${TOLLGATE_TEST_PYTHON:-$ROOT/target/pyvenv/bin/python}

for bin in /usr/bin/chromium /usr/bin/chromedriver; do
    [ -x "$bin" ] || { echo "screenshots.sh: $bin missing: apt-get install -y chromium chromium-driver" >&2; exit 1; }
done
"$PY" -c 'import selenium' 2>/dev/null || { echo "screenshots.sh: no selenium in $PY: run ./scripts/test.sh" >&2; exit 1; }

timeout 30m cargo build --bin tollgate
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tollgate
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac

WORK=$(mktemp -d)
GW=""
cleanup() {
    if [ -n "$GW" ]; then kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

export TOLLGATE_ADMIN_KEY="sk-admin-screenshots-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export SCREENSHOT_TOKEN_A=dummy-token-a SCREENSHOT_TOKEN_B=dummy-token-b
{
    cat "$ROOT/examples/quickstart.yaml"
    printf '\ncredentials:\n  demo-pool:\n    kind: pool\n'
    printf '    tokens: ["${SCREENSHOT_TOKEN_A}", "${SCREENSHOT_TOKEN_B}"]\n'
} >"$WORK/console.yaml"
# The quickstart's store is `sqlite://tollgate.db`, relative to the working directory.
(cd "$WORK" && RUST_LOG=warn exec "$BIN" serve --config "$WORK/console.yaml" \
    --listen 127.0.0.1:0 --addr-file "$WORK/addr" >"$WORK/gateway.log" 2>&1) &
GW=$!
for _ in $(seq 100); do
    [ -s "$WORK/addr" ] && break
    kill -0 "$GW" 2>/dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }
    sleep 0.1
done
[ -s "$WORK/addr" ] || { echo "screenshots.sh: the gateway did not start" >&2; cat "$WORK/gateway.log" >&2; exit 1; }

mkdir -p "$OUT"
timeout 5m "$PY" "$ROOT/tests/python/console_browser.py" "http://$(cat "$WORK/addr")" "$TOLLGATE_ADMIN_KEY" \
    --screenshots "$OUT" --seed "$WORK/tollgate.db" --credential demo-pool
ls -l "$OUT"/*.png
