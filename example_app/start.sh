#!/usr/bin/env bash
# Install what the demo needs, build release 1.0.0 and serve it on $PORT.
set -euo pipefail
cd "$(dirname "$0")"
PORT="${PORT:-4000}"
HOST="${HOST:-127.0.0.1}"

if [ ! -x .venv/bin/uv ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
.venv/bin/uv pip install --quiet --python .venv/bin/python "${BEAMDEPLOY_SOURCE:-..}"
./make_release.sh 1.0.0

echo "demo on http://$HOST:$PORT  (deploy another version: ./deploy.sh 1.1.0)"
exec .venv/bin/beamdeploy serve --bind "$HOST:$PORT" --workers 2 \
    --release releases/demo-1.0.0 --health-path /healthz --state-dir .beamdeploy
