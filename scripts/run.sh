#!/usr/bin/env bash
# Quick start, command one: the main job on the built-in data.
source "$(dirname "$0")/setup.sh"
exec .venv/bin/scalavit widths "$@"
