#!/usr/bin/env bash
# Quick start, command two: the test suite.
source "$(dirname "$0")/setup.sh"
exec .venv/bin/python -m pytest "$@"
