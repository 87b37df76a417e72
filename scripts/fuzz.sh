#!/usr/bin/env bash
# Long runs of the property tests over the parsers and the request shaping:
#   ./scripts/fuzz.sh [seconds per group, default 300] [cases, default 1000000]
#
# The test command runs each property for 256 cases; this runs the same properties for many
# more, each group bounded by time (a group that is still running when its time is up is stopped
# and counted as passed so far; any failure stops the script with proptest's minimal case).
#   framing guard:   src/server/framing.rs  (bytes hyper parses are never changed; suspect heads
#                    are always marked; any split of the reads gives the same output)
#   request shaping: src/policy.rs          (no capping field above the team's cap; one number)
#   SSE splitter:    src/proxy/relay.rs     (any split gives the same events; a cut event is
#                    never passed on)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-300}
CASES=${2:-1000000}
export PROPTEST_CASES=$CASES
cargo nextest run --no-run --lib >/dev/null || exit 1
fail=0
for group in 'test(/^server::framing::tests::/)' 'test(/^policy::tests::properties::/)' \
    'test(/^proxy::relay::.*split_property::/)'; do
    echo "==> $group: $CASES cases, at most ${SECS}s" >&2
    timeout --kill-after=10s "$SECS" cargo nextest run --lib --no-fail-fast -E "$group"
    rc=$?
    if [ $rc -eq 124 ]; then
        echo "==> $group: time is up (${SECS}s), no failure found" >&2
    elif [ $rc -ne 0 ]; then
        echo "==> $group: FAILED" >&2
        fail=1
    fi
done
exit $fail
