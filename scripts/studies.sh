#!/usr/bin/env bash
# The studies of the paper's comparison, one after the other, each writing its page of docs/ (studies/*.py say
# what each measures). Runs go to runs/studies and are shared between studies; a stopped sequence continues where it
# stopped. After each study, docs/study_runs.md lists every finished run and docs/data/study_runs/ keeps its configuration
# and log (in git: a new machine reuses them). Several hours on a 2-core CPU: run it alone.
#   bash scripts/studies.sh
source "$(dirname "$0")/setup.sh"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
set -e
for study in paper_table constant_activation granularity slicing_bound grad_interference regime; do
    .venv/bin/python "studies/$study.py" "$@"
    .venv/bin/python studies/study.py
done
