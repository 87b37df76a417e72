#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer on loopback.
#
# Idempotent and silent when both already answer. Otherwise starts whichever is down
# (installing the Debian packages first if the binaries are missing) and waits, bounded,
# until both answer. Exits non-zero with a clear message if they do not.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
WAIT_SECS=${SERVICES_WAIT_SECS:-30}

say() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

# Privileged commands go through sudo when we are not root (and sudo exists).
SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
fi

pg_up() {
    command -v pg_isready >/dev/null 2>&1 &&
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

redis_up() {
    command -v redis-cli >/dev/null 2>&1 &&
        [ "$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

# The tests connect as postgres@127.0.0.1 without a password (trust auth, as on this machine
# kind). A freshly installed Debian cluster asks for one: switch loopback to trust once.
pg_trust() {
    PGCONNECT_TIMEOUT=3 psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qAtc 'select 1' \
        >/dev/null 2>&1 && return 0
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -n 1)
    [ -n "$hba" ] || die "PostgreSQL refuses postgres@$PG_HOST and no pg_hba.conf was found"
    say "allowing trust auth on loopback in $hba"
    "${SUDO[@]}" sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+).*/\1trust/' "$hba"
    # shellcheck disable=SC2046,SC2012
    "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main reload >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do
        PGCONNECT_TIMEOUT=3 psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qAtc 'select 1' \
            >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "PostgreSQL still refuses postgres@$PG_HOST without a password"
}

if pg_up && redis_up; then
    pg_trust
    exit 0
fi

# Install what is missing.
packages=()
if ! pg_up; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1 ||
        [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        packages+=(postgresql)
    fi
fi
if ! redis_up; then
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        packages+=(redis-server)
    fi
fi
if [ ${#packages[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${packages[*]} and no apt-get to install them"
    say "installing ${packages[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 "${SUDO[@]}" apt-get update -qq >/dev/null ||
        die "apt-get update failed"
    timeout 900 "${SUDO[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null ||
        die "apt-get install ${packages[*]} failed"
fi

# Start what is down. A failed start is reported; the wait below decides.
if ! pg_up; then
    versions=$(ls /etc/postgresql 2>/dev/null || true)
    [ -n "$versions" ] || die "no PostgreSQL cluster under /etc/postgresql"
    say "starting PostgreSQL $versions/main"
    # shellcheck disable=SC2046,SC2012
    if ! out=$("${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start 2>&1); then
        say "pg_ctlcluster: ${out:-failed}"
    fi
fi
if ! redis_up; then
    say "starting Redis on $REDIS_HOST:$REDIS_PORT"
    if ! out=$("${SUDO[@]}" redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log 2>&1); then
        say "redis-server: ${out:-failed}"
    fi
fi

# Wait, bounded, until both answer.
deadline=$((SECONDS + WAIT_SECS))
while :; do
    pg_ok=0 redis_ok=0
    pg_up && pg_ok=1
    redis_up && redis_ok=1
    if [ $pg_ok -eq 1 ] && [ $redis_ok -eq 1 ]; then
        pg_trust
        say "PostgreSQL and Redis are up"
        exit 0
    fi
    if [ $SECONDS -ge $deadline ]; then
        [ $pg_ok -eq 1 ] || say "PostgreSQL does not answer on $PG_HOST:$PG_PORT (pg_isready); see /var/log/postgresql/"
        [ $redis_ok -eq 1 ] || say "Redis does not answer PONG on $REDIS_HOST:$REDIS_PORT (redis-cli ping); see /var/log/redis/ci.log"
        die "services not ready after ${WAIT_SECS}s"
    fi
    sleep 0.5
done
