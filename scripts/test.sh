#!/usr/bin/env bash
# Quick start, command two: the test suite.
# One worker per core (pytest-xdist); each test file stays on one worker, so its module fixtures (a trained run, a
# compile cache) are built once. Add `-n 0` to run in this process, e.g. for one test under a debugger.
# `--fast` leaves out the tests marked slow (studies, compilation, torchrun, Ray, load): the edit-test loop.
source "$(dirname "$0")/setup.sh"
if [ "${1:-}" = --fast ]; then
    shift
    set -- -m 'not slow' "$@"
fi
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
