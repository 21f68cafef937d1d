#!/usr/bin/env bash
# The demo: install what it needs, then serve it on $PORT (default 4000) and
# print the page's address. The page deploys the demo itself.
#
# The first run builds and deploys release 1.0.0; later runs boot whatever
# was deployed last (.beamdeploy/current), with the same admin token.
#
#   .venv/        the demo's own venv: beamdeploy-asgi (editable, from this checkout) and uv
#   .demo/token   the admin token (mode 0600), made here once
#   .demo/builds  the releases the page builds; the arbiter deploys from here alone
#   .beamdeploy/  the arbiter's state: release store, history, control socket
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

if [ -e .beamdeploy ] && [ ! -e .demo/token ]; then
    # State of the earlier demo (no page, no token): start afresh, keeping it aside.
    rm -rf .beamdeploy.earlier
    mv .beamdeploy .beamdeploy.earlier
    echo "moved the earlier demo's state to example_app/.beamdeploy.earlier"
fi
# The admin token: made once, readable by this user alone, kept across restarts.
(
    umask 077
    mkdir -p .demo/builds
    if [ ! -s .demo/token ]; then
        .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .demo/token.new
        mv .demo/token.new .demo/token
    fi
)
chmod 700 .demo
chmod 600 .demo/token
BEAMDEPLOY_TOKEN="$(cat .demo/token)"
export BEAMDEPLOY_TOKEN
export DEMO_HOME="$PWD"

release=()
if [ ! -e .beamdeploy/current ]; then
    .venv/bin/beamdeploy build . -o .demo/builds --version 1.0.0
    release=(--release .demo/builds/demo-1.0.0.tar.gz)
fi

echo "demo on http://$HOST:$PORT/#token=$BEAMDEPLOY_TOKEN"
echo "  (open that address: the page deploys with the admin token after the #; Ctrl-C stops the demo)"
exec .venv/bin/beamdeploy serve --bind "$HOST:$PORT" --workers 2 --health-path /healthz \
    --state-dir .beamdeploy --release-dir "$PWD/.demo/builds" "${release[@]}"
