# shellcheck shell=bash
# Herald local bootstrap: sourced by compose/stack.sh and compose/test.sh.
#
#   herald_venv      python3 + .venv/ + requirements (reinstalled only when they change)
#   herald_postgres  Postgres reachable on 127.0.0.1:5432 with trust auth for "postgres"
#   herald_rabbitmq  RabbitMQ on 127.0.0.1:5672 with the management API on :15672
#   herald_services  both of the above
#   herald_node      node + npm, and tests/js/node_modules from its lock (npm ci when it changes)
#
# Anything missing is installed with apt-get when running as root; otherwise the
# functions say what to do and exit 1. Messages go to stderr, prefixed "herald:".
set -euo pipefail

HERALD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
_HERALD_APT_UPDATED=0  # apt-get update runs at most once per script run

herald_say() { echo "herald: $*" >&2; }
herald_die() { herald_say "$*"; exit 1; }
herald_is_root() { [ "$(id -u)" -eq 0 ]; }

# herald_apt_install PKG...: apt-get install as root (updating the lists once first).
herald_apt_install() {
    herald_is_root || herald_die "need root to install $*; install it yourself (sudo apt-get install $*)"
    if [ "$_HERALD_APT_UPDATED" = 0 ]; then
        herald_say "apt-get update"
        apt-get update -q >&2
        _HERALD_APT_UPDATED=1
    fi
    herald_say "apt-get install $*"
    apt-get install -y -q "$@" >&2
}

# herald_port_open HOST PORT: true when a TCP connect succeeds within 1 s.
herald_port_open() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()' \
            "$1" "$2" 2>/dev/null
    else
        timeout 1 bash -c "</dev/tcp/$1/$2" 2>/dev/null
    fi
}

# herald_url_is_local URL DEFAULT_PORT: true for an unset URL or one naming
# 127.0.0.1/localhost on the default port (the services this script manages).
herald_url_is_local() {
    local url="${1:-}" rest host port
    [ -z "$url" ] && return 0
    rest="${url#*://}"; rest="${rest%%/*}"; rest="${rest##*@}"  # [user:pw@]host[:port]
    host="${rest%%:*}"; port="${rest#"$host"}"; port="${port#:}"
    [[ "$host" == "127.0.0.1" || "$host" == "localhost" ]] && [[ -z "$port" || "$port" == "$2" ]]
}

herald_venv() {
    if ! command -v python3 >/dev/null; then
        herald_is_root || herald_die "python3 is missing; install python3, python3-venv, python3-dev and gcc"
        herald_apt_install python3 python3-venv python3-dev gcc
    fi
    local venv="$HERALD_ROOT/.venv" req="$HERALD_ROOT/requirements.txt" stamp sum
    if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
        herald_say "creating $venv"
        if ! python3 -m venv "$venv" >&2; then
            # Debian ships ensurepip separately, in python3-venv
            herald_is_root || herald_die "python3 -m venv failed; install python3-venv (sudo apt-get install python3-venv)"
            herald_apt_install python3-venv
            python3 -m venv "$venv" >&2
        fi
    fi
    stamp="$venv/.requirements.sha256"
    sum="$(sha256sum "$req" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$sum" ]; then
        herald_say "installing requirements.txt into .venv"
        "$venv/bin/pip" install -q --upgrade pip >&2
        "$venv/bin/pip" install -q -r "$req" >&2
        echo "$sum" >"$stamp"
    fi
}

# herald_node: node and npm for herald.js's tests (tests/js: node --test, tsc), and
# tests/js/node_modules installed by `npm ci` from tests/js/package-lock.json; again only
# when the lock changes (a stamp in node_modules/, as .venv keeps for requirements.txt).
HERALD_NODE_MIN=18  # node --test and node:test's mock
herald_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        herald_is_root || herald_die "node and npm are missing (herald.js's tests need them); install them (sudo apt-get install nodejs npm)"
        herald_apt_install nodejs npm
    fi
    local major dir="$HERALD_ROOT/tests/js" stamp sum
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge "$HERALD_NODE_MIN" ] \
        || herald_die "node $major is too old for herald.js's tests (need $HERALD_NODE_MIN or later)"
    stamp="$dir/node_modules/.package-lock.sha256"
    sum="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [ ! -d "$dir/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$sum" ]; then
        herald_say "npm ci in tests/js (TypeScript, pinned by its package-lock.json)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 \
            || herald_die "npm ci in tests/js failed (is the npm registry reachable? npm config get registry)"
        echo "$sum" >"$stamp"
    fi
}

# Start every installed cluster that is not running (root only).
_herald_pg_start_clusters() {
    local dir ver
    for dir in /etc/postgresql/*/main; do
        ver="$(basename "$(dirname "$dir")")"
        if ! pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
            herald_say "starting Postgres cluster $ver/main"
            pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2
        fi
    done
}

herald_postgres() {
    if ! herald_url_is_local "${HERALD_DATABASE_URL:-}" 5432; then
        herald_say "HERALD_DATABASE_URL names another Postgres; not managing a local one"
        return 0
    fi
    _pg_up() {
        if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p 5432
        else herald_port_open 127.0.0.1 5432; fi
    }
    if ! _pg_up; then
        if compgen -G '/etc/postgresql/*/main' >/dev/null; then
            herald_is_root || herald_die "Postgres is installed but stopped; start it (sudo pg_ctlcluster --skip-systemctl-redirect <version> main start)"
            _herald_pg_start_clusters
        else
            herald_is_root || herald_die "Postgres is not installed; install it (sudo apt-get install postgresql) with trust auth for user postgres on 127.0.0.1"
            herald_apt_install postgresql
            # Herald (and its tests) connect as postgres@127.0.0.1 without a password
            local line="host all postgres 127.0.0.1/32 trust" hba dir ver
            for hba in /etc/postgresql/*/main/pg_hba.conf; do
                grep -qxF "$line" "$hba" || sed -i "1i $line" "$hba"
            done
            _herald_pg_start_clusters
            for dir in /etc/postgresql/*/main; do  # apt may have started it before the edit
                ver="$(basename "$(dirname "$dir")")"
                pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >&2
            done
        fi
        local _
        for _ in $(seq 30); do _pg_up && break; sleep 1; done
        _pg_up || herald_die "Postgres did not become ready on 127.0.0.1:5432 within 30 s"
    fi
    if command -v psql >/dev/null && ! psql -X -w -q -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
        if [[ "${HERALD_DATABASE_URL:-}" =~ ://[^/@]*:[^/@]*@ ]]; then
            herald_say "psql as postgres@127.0.0.1 failed; relying on the password in HERALD_DATABASE_URL"
        else
            herald_die "cannot connect as postgres@127.0.0.1 ($(psql -X -w -h 127.0.0.1 -U postgres -c 'select 1' 2>&1 | head -1)). Herald expects trust auth for user postgres on 127.0.0.1 (pg_hba.conf: 'host all postgres 127.0.0.1/32 trust') or a HERALD_DATABASE_URL with a password"
        fi
    fi
}

# herald_rabbit_api: true when the management API answers guest:guest.
herald_rabbit_api() {
    local url="http://127.0.0.1:15672/api/overview"
    if command -v curl >/dev/null; then
        curl -fsS -m 3 -u guest:guest -o /dev/null "$url" 2>/dev/null
    else
        python3 - "$url" <<'EOF' 2>/dev/null
import base64, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
urllib.request.urlopen(req, timeout=3).read()
EOF
    fi
}

herald_rabbitmq() {
    if ! herald_url_is_local "${HERALD_BROKER_URL:-}" 5672; then
        herald_say "HERALD_BROKER_URL names another broker; not managing a local RabbitMQ"
        return 0
    fi
    local _
    if ! herald_port_open 127.0.0.1 5672; then
        if ! command -v rabbitmq-server >/dev/null; then
            herald_is_root || herald_die "RabbitMQ is not installed; install it (sudo apt-get install rabbitmq-server) and start it"
            herald_apt_install rabbitmq-server
        fi
        if ! herald_port_open 127.0.0.1 5672; then  # the package may have started it
            herald_is_root || herald_die "RabbitMQ is installed but stopped; start it (sudo rabbitmq-server -detached)"
            herald_say "starting RabbitMQ"
            rabbitmq-server -detached >&2
        fi
        for _ in $(seq 60); do
            herald_port_open 127.0.0.1 5672 && rabbitmqctl -q status >/dev/null 2>&1 && break
            sleep 1
        done
        herald_port_open 127.0.0.1 5672 || herald_die "RabbitMQ did not start within 60 s (see /var/log/rabbitmq/)"
    fi
    # the management API is used by the tests and by Flower
    if ! herald_rabbit_api; then
        herald_is_root || herald_die "RabbitMQ's management API is off; enable it (sudo rabbitmq-plugins enable rabbitmq_management)"
        herald_say "enabling rabbitmq_management"
        rabbitmq-plugins enable rabbitmq_management >&2
        for _ in $(seq 30); do herald_rabbit_api && break; sleep 1; done
        herald_rabbit_api || herald_die "RabbitMQ management API (http://127.0.0.1:15672/api/overview, guest:guest) did not answer within 30 s"
    fi
}

herald_services() {
    herald_postgres
    herald_rabbitmq
}

# herald_browser_tools: Debian's chromium and nginx for the browser test (no browser
# download: Playwright drives /usr/bin/chromium). The packages' own nginx service is
# not started: the test runs its own nginx on a loopback port.
herald_browser_tools() {
    if [ -x /usr/bin/chromium ] && command -v nginx >/dev/null 2>&1; then
        return 0
    fi
    local policy=/usr/sbin/policy-rc.d created=0
    if herald_is_root && [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
    fi
    herald_apt_install chromium nginx
    [ "$created" = 1 ] && rm -f "$policy"
    return 0
}

# herald_topology_tools: iproute2 and nftables for the fault tests (network namespaces of
# their own, packet loss by nftables inside them; both need root, as CI runs).
herald_topology_tools() {
    if command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1; then
        return 0
    fi
    if ! herald_is_root; then
        herald_say "warning: ip or nft missing and not root: the fault tests (tests/e2e/test_faults.py) will fail; install iproute2 and nftables and run as root"
        return 0
    fi
    herald_apt_install iproute2 nftables
}
