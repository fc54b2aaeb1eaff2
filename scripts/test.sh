#!/usr/bin/env bash
# Quick start, command two: the test suite.
# One worker per core (pytest-xdist); each test file stays on one worker, so its module fixtures (a trained run, a
# compile cache) are built once. Add `-n 0` to run in this process, e.g. for one test under a debugger.
# `--fast` leaves out the tests marked slow (studies, compilation, torchrun, Ray, load): the edit-test loop.
source "$(dirname "$0")/setup.sh"
# The serving page is tested in a real browser: Debian's Chromium and its driver.
if ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Chromium and its driver (Debian packages chromium, chromium-driver) for the page's tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "setup: no chromedriver: the page's browser tests will be skipped; install them with" >&2
        echo "  sudo apt-get install -y chromium chromium-driver" >&2
    fi
fi
if [ "${1:-}" = --fast ]; then
    shift
    set -- -m 'not slow' "$@"
fi
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
