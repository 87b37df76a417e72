#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh
#
# Services (PostgreSQL, Redis), headless Chromium for the console's browser test, a Python venv
# with the official openai SDK and selenium, then rustfmt check, clippy (warnings are errors) and
# the test suite. Every step is time-bounded;
# the script exits non-zero on the first failing step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
START=$SECONDS

step() { printf '\n==> %s\n' "$*" >&2; }
fail() { echo "test.sh: FAILED: $*" >&2; exit 1; }

# Ctrl-C / SIGTERM stop the running step and everything under it. `timeout` runs its command
# in a process group of its own (so a timeout kills all of it, test processes included); that
# group does not get the terminal's Ctrl-C, so the step runs in the background, `wait` is
# interrupted by the signal, and the trap passes it on to `timeout`.
child=""
on_signal() {
    trap - INT TERM
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    echo "test.sh: interrupted" >&2
    exit 130
}
trap on_signal INT TERM

# run LIMIT DESCRIPTION CMD...: run CMD bounded by LIMIT, fail with DESCRIPTION.
run() {
    local limit=$1 what=$2
    shift 2
    local rc=0
    timeout --kill-after=30s "$limit" "$@" &
    child=$!
    wait "$child" || rc=$?
    child=""
    if [ $rc -eq 124 ]; then
        fail "$what: timed out after $limit"
    elif [ $rc -eq 137 ]; then
        fail "$what: killed (SIGKILL: out of memory, or still running 30s after the $limit timeout)"
    elif [ $rc -ne 0 ]; then
        fail "$what (exit $rc)"
    fi
}

step "services: PostgreSQL and Redis"
run 20m "services" "$ROOT/scripts/services.sh"

step "browser: chromium and chromium-driver (the console's browser test)"
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "$(/usr/bin/chromedriver --version | head -1) already installed" >&2
else
    command -v apt-get >/dev/null || fail "chromium and chromium-driver are missing and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    run 10m "apt-get update" apt-get update -q
    run 20m "apt-get install chromium chromium-driver" apt-get install -y -q chromium chromium-driver
fi

step "python venv: target/pyvenv with openai, anthropic and selenium"
VENV=$ROOT/target/pyvenv
if "$VENV/bin/python" -c 'import openai, anthropic, selenium' >/dev/null 2>&1; then
    echo "openai $("$VENV/bin/python" -c 'import openai; print(openai.__version__)'), selenium $("$VENV/bin/python" -c 'import selenium; print(selenium.__version__)') already installed" >&2
else
    if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        run 2m "python3 -m venv (on Debian this needs the python3-venv package)" \
            python3 -m venv --clear "$VENV"
    fi
    # selenium drives the system chromedriver (never a downloaded one: see tests/console_browser.rs).
    run 10m "pip install openai anthropic selenium" \
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'openai>=1.40,<3' 'anthropic>=0.40,<3' 'selenium>=4.20,<5'
    "$VENV/bin/python" -c 'import openai, anthropic, selenium' || fail "openai, anthropic or selenium still not importable in $VENV"
fi

export TOLLGATE_TEST_PYTHON=$VENV/bin/python
export TOLLGATE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/postgres
export TOLLGATE_TEST_REDIS_URL=redis://127.0.0.1:6379

step "cargo fmt --all -- --check"
run 5m "cargo fmt (run 'cargo fmt --all' to fix)" cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
run 20m "cargo clippy" cargo clippy --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --no-fail-fast"
    run 15m "tests" cargo nextest run --no-fail-fast
else
    step "cargo test --no-fail-fast (cargo-nextest not installed)"
    run 15m "tests" cargo test --no-fail-fast
fi

printf '\n==> all passed in %ds\n' $((SECONDS - START)) >&2
