#!/usr/bin/env bash
# Tollgate's benchmark: ./scripts/bench.sh [tollgate-bench options]
#
# Builds the release binaries, raises the open-files soft limit (1,000 held streams need a few
# thousand descriptors between the generator, the mock and the gateway), then runs
# target/release/tollgate-bench (its defaults unless options are given) and tees the output to
# target/bench.txt (BENCH_OUT overrides). Method and results: docs/BENCHMARKS.md.
#
# Installs nothing. nginx, the bare-proxy reference, is measured only when installed; on
# Debian/Ubuntu, optionally: apt-get install -y nginx-light   (the service need not run).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${BENCH_OUT:-target/bench.txt}

echo "==> cargo build --release --bins --features testkit" >&2
cargo build --release --bins --features testkit

want=65536
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
    want=$hard
fi
soft=$(ulimit -Sn)
if [ "$soft" != unlimited ] && [ "$soft" -lt "$want" ]; then
    ulimit -Sn "$want"
fi
echo "==> open files limit: $(ulimit -Sn)" >&2

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "==> nginx not installed: the nginx reference is skipped" \
        "(optional: apt-get install -y nginx-light)" >&2
fi

mkdir -p "$(dirname "$OUT")"
echo "==> target/release/tollgate-bench $* | tee $OUT" >&2
target/release/tollgate-bench --gateway-bin target/release/tollgate "$@" 2>&1 | tee "$OUT"
