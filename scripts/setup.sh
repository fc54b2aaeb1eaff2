# Sourced by run.sh and test.sh: makes .venv with scalavit installed, and the Fashion-MNIST Debian package present.
# Idempotent: a second run re-installs only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FASHION_MNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_MNIST/train-images-idx3-ubyte.gz" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing the Fashion-MNIST Debian package (dataset-fashion-mnist)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: Fashion-MNIST is missing from $FASHION_MNIST; install it with" >&2
        echo "  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    # torch's CUDA build alone unpacks to about 5.5 GB: one clear line now rather than pip's ENOSPC traceback later.
    need_gb=8
    free_gb=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1048576 ))
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "setup: .venv needs about $need_gb GB but $PWD has $free_gb GB free: free some space and run again" >&2
        exit 1
    fi
    echo "setup: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.scalavit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing scalavit and its pinned dependencies into .venv (torch 2.14.1, torchvision 0.29.1, timm, ...)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    touch "$stamp"
fi
