#!/usr/bin/env bash
# Quick start, command two: the test suite.
# One worker per core (pytest-xdist); each test file stays on one worker, so its module fixtures (a trained run, a
# compile cache) are built once. Add `-n 0` to run in this process, e.g. for one test under a debugger.
# `--fast` leaves out the tests marked slow (studies, compilation, torchrun, Ray, load): the edit-test loop.
source "$(dirname "$0")/setup.sh"
# The serving page is tested in real browsers: Debian's Chromium with its driver, and Firefox ESR.
if ! command -v chromedriver >/dev/null || ! command -v firefox-esr >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Chromium, its driver and Firefox ESR (Debian packages) for the page's tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
            firefox-esr >/dev/null
    else
        echo "setup: no chromedriver or firefox-esr: the page's browser tests will be skipped; install them with" >&2
        echo "  sudo apt-get install -y chromium chromium-driver firefox-esr" >&2
    fi
fi
if [ "${1:-}" = --fast ]; then
    shift
    set -- -m 'not slow' "$@"
fi
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
