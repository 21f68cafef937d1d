#!/usr/bin/env bash
# Install what the demo needs and serve it on $PORT (default 4000).
# The first run builds and deploys release 1.0.0; later runs boot whatever
# release was deployed last (.beamdeploy/current).
set -euo pipefail
cd "$(dirname "$0")"
PORT="${PORT:-4000}"
HOST="${HOST:-127.0.0.1}"

if [ ! -x .venv/bin/uv ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
# Editable, so `beamdeploy build` can bundle beamdeploy-asgi from this checkout.
.venv/bin/uv pip install --quiet --python .venv/bin/python -e "${BEAMDEPLOY_SOURCE:-..}"

release=()
if [ ! -e .beamdeploy/current ]; then
    .venv/bin/beamdeploy build . -o dist --version 1.0.0
    release=(--release dist/demo-1.0.0.tar.gz)
fi

echo "demo on http://$HOST:$PORT  (deploy another version: ./deploy.sh 1.1.0)"
exec .venv/bin/beamdeploy serve --bind "$HOST:$PORT" --workers 2 --health-path /healthz \
    --state-dir .beamdeploy "${release[@]}"
