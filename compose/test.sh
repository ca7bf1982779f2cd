#!/usr/bin/env bash
# Run Herald's test suite against local Postgres and RabbitMQ (installed/started if needed).
#
#   compose/test.sh [PYTEST ARGS...]     e.g. compose/test.sh -k test_migrations
#
# HERALD_TEST_JOBS=N (default 2) test processes share the whole suite; 1 runs it in one.
# HERALD_LINT=1 (the default when CI=true) runs ruff and mypy first.
# herald.js's own tests (tests/js: node --test, and tsc on herald.d.ts) run before pytest.
# Fails when they fail, or when pytest fails, collects no test, or skips any test.
set -euo pipefail
cd "$(dirname "$0")/.."
source compose/bootstrap.sh

herald_venv
herald_node
herald_services
herald_browser_tools
herald_topology_tools

if [ "${HERALD_LINT:-$([ "${CI:-}" = true ] && echo 1 || echo 0)}" = 1 ]; then
    # settings live under .ci/ (ruff.toml, mypy.ini) when present
    ruff_cfg=(); mypy_cfg=()
    [ -f .ci/ruff.toml ] && ruff_cfg=(--config .ci/ruff.toml)
    [ -f .ci/mypy.ini ] && mypy_cfg=(--config-file .ci/mypy.ini)
    herald_say "lint: ruff"
    .venv/bin/ruff check "${ruff_cfg[@]}" service workers tests manage.py bench
    herald_say "lint: mypy"
    .venv/bin/python -m mypy "${mypy_cfg[@]}" service workers
    herald_say "lint: import layers (import-linter)"
    .venv/bin/lint-imports .ci/importlinter.ini
fi

herald_say "herald.js: node --test and tsc --noEmit (tests/js)"
(cd tests/js && node --test && ./node_modules/.bin/tsc --noEmit -p .) \
    || herald_die "herald.js's tests failed (run them: cd tests/js && npm test)"

mkdir -p test-artifacts

# One pytest run, logged; fails on a failure, on no test collected, and on any skip.
run_pytest() {
    local what="$1" log rc summary
    shift
    log="test-artifacts/pytest-$(date +%Y%m%d-%H%M%S)-$$-$what.log"
    herald_say "pytest ($what)"
    set +e
    .venv/bin/python -m pytest tests/ -p no:cacheprovider --timeout 300 -q -rfEs --durations=25 "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 5 ]; then
        herald_die "pytest collected no tests (exit 5); output in $log"
    elif [ "$rc" -ne 0 ]; then
        herald_say "pytest failed (exit $rc); output in $log"
        exit "$rc"
    fi
    # the closing summary, e.g. "12 passed, 1 skipped in 3.21s": a skip is a failure here
    summary="$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s' "$log" | tail -1 || true)"
    if [[ "$summary" == *skipped* ]]; then
        herald_die "tests were skipped ($summary); every test must run. Output in $log"
    fi
}

# The whole suite (no arguments): HERALD_TEST_JOBS processes (pytest-xdist, default 2) share
# the test files, each with its own database, exchange and queues; most tests wait on
# processes and timeouts rather than on the CPU. Tests marked ``exclusive`` restart the
# shared RabbitMQ or Postgres, so they run afterwards, alone. With arguments (a subset, e.g.
# -k test_migrations) everything runs in one process, as given.
jobs="${HERALD_TEST_JOBS:-2}"
if [ "$#" -eq 0 ] && [ "$jobs" -gt 1 ]; then
    run_pytest parallel -n "$jobs" --dist loadfile -m "not exclusive"
    run_pytest exclusive -m exclusive
else
    run_pytest all "$@"
fi
