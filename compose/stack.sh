#!/usr/bin/env bash
# Run the whole Herald stack locally: two frontends, a Celery worker, beat and Flower.
#
#   compose/stack.sh          start it and stay in the foreground (Ctrl-C stops it)
#   compose/stack.sh stop     stop a stack started earlier (from var/stack.pids)
#
# Ports: HERALD_PORT_A (8001), HERALD_PORT_B (8002), HERALD_FLOWER_PORT (5555).
# Each role runs in its own process group; only the groups recorded in var/stack.pids
# are ever signalled. Logs go to var/log/<role>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
source compose/bootstrap.sh

PORT_A="${HERALD_PORT_A:-8001}"
PORT_B="${HERALD_PORT_B:-8002}"
FLOWER_PORT="${HERALD_FLOWER_PORT:-5555}"
PIDS=var/stack.pids  # lines "PID STARTTIME ROLE"; PID is also the process group id
PY=.venv/bin/python

# The start time (from /proc) tells our process apart from a later one reusing its PID.
start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }

# http_code URL: the HTTP status of a GET (000 when nothing answers).
http_code() {
    if command -v curl >/dev/null; then curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
    else "$PY" -c 'import sys, urllib.request as u
try: print(u.urlopen(sys.argv[1], timeout=2).status)
except Exception as e: print(getattr(e, "code", "000"))' "$1"; fi
}

# Print the recorded PIDs that are still ours.
live_pids() {
    local pid st role
    [ -f "$PIDS" ] || return 0
    while read -r pid st role; do
        [ -n "$pid" ] && [ "$(start_time "$pid")" = "$st" ] && echo "$pid"
    done <"$PIDS"
    return 0
}

# SIGTERM each recorded process group, wait up to 15 s, then SIGKILL what is left.
stop_stack() {
    local pids pid left
    pids="$(live_pids)"
    if [ -n "$pids" ]; then
        herald_say "stopping $(echo "$pids" | wc -l) processes"
        for pid in $pids; do kill -TERM -- "-$pid" 2>/dev/null || true; done
        for _ in $(seq 30); do
            left=""
            for pid in $pids; do kill -0 -- "-$pid" 2>/dev/null && left="$left $pid"; done
            [ -z "$left" ] && break
            sleep 0.5
        done
        for pid in $left; do
            herald_say "process group $pid did not stop in 15 s; SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
        done
    fi
    rm -f "$PIDS"
}

if [ "${1:-}" = stop ]; then
    [ -f "$PIDS" ] || herald_die "no $PIDS: nothing to stop"
    stop_stack
    exit 0
fi
[ -z "$(live_pids)" ] || herald_die "a stack is already running ($PIDS); stop it with: compose/stack.sh stop"

herald_venv
herald_services
"$PY" manage.py db upgrade

mkdir -p var/log
: >"$PIDS"
trap 'stop_stack' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

declare -A ROLE_PID
# start ROLE ARGS...: manage.py ARGS in a new session (own process group), logged.
start() {
    local role="$1" pid; shift
    # setsid execs in place here (a background job of a script is no group leader)
    env -u HERALD_FRONTEND_ID setsid "$PY" manage.py "$@" >"var/log/$role.log" 2>&1 </dev/null &
    pid=$!
    ROLE_PID[$role]=$pid
    echo "$pid $(start_time "$pid") $role" >>"$PIDS"
    herald_say "started $role (pid $pid, log var/log/$role.log)"
}
start "frontend-$PORT_A" run frontend --port "$PORT_A"
start "frontend-$PORT_B" run frontend --port "$PORT_B"
start worker run worker
start beat run beat
start flower run flower --port "$FLOWER_PORT"

# Both frontends must answer /readyz with 200 within 60 s.
for port in "$PORT_A" "$PORT_B"; do
    for _ in $(seq 120); do
        code="$(http_code "http://127.0.0.1:$port/readyz")"
        [ "$code" = 200 ] && break
        kill -0 "${ROLE_PID[frontend-$port]}" 2>/dev/null || break  # it exited: no point waiting
        sleep 0.5
    done
    if [ "$code" != 200 ]; then
        herald_say "frontend on :$port not ready (exited, or 60 s passed); its log:"
        tail -n 40 "var/log/frontend-$port.log" >&2
        exit 1  # the EXIT trap stops everything
    fi
done

if [ -n "${HERALD_API_KEYS:-}" ]; then
    api_key="(from HERALD_API_KEYS)"
else
    api_key="$(cat "${HERALD_VAR_DIR:-var}/dev-api-key" 2>/dev/null || true)"
fi
cat <<EOF

Herald is running (logs in var/log/, Ctrl-C to stop):
  demo pages      http://127.0.0.1:$PORT_A/   http://127.0.0.1:$PORT_B/
  WebSocket       ws://127.0.0.1:$PORT_A/ws   ws://127.0.0.1:$PORT_B/ws
  HTTP API        http://127.0.0.1:$PORT_A/api   http://127.0.0.1:$PORT_B/api
  metrics         http://127.0.0.1:$PORT_A/metrics   http://127.0.0.1:$PORT_B/metrics
  admin console   http://127.0.0.1:$PORT_A/admin   (sign in with the API key below)
  Flower          http://127.0.0.1:$FLOWER_PORT
  RabbitMQ admin  http://127.0.0.1:15672  (guest/guest)
  API key         $api_key   (Authorization: Bearer <key>)
  client token    $PY manage.py token --user alice --join 'default/*' --publish 'default/*'
EOF

# Stay in the foreground; if any role exits on its own, stop the rest.
wait -n || true
herald_say "a process of the stack exited; see var/log/. Stopping the rest."
exit 1
