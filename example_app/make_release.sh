#!/usr/bin/env bash
# Build releases/demo-VERSION: a manifest and a venv with the demo and
# beamdeploy-asgi installed (copies, not links: a release never changes).
set -euo pipefail
cd "$(dirname "$0")"
version="${1:?usage: ./make_release.sh VERSION}"
release="releases/demo-$version"
if [ -d "$release" ]; then
    echo "$release exists (releases are immutable)"
    exit 0
fi
tmp="releases/.building-demo-$version"
rm -rf "$tmp"
mkdir -p "$tmp"
.venv/bin/uv venv --quiet --python .venv/bin/python "$tmp/venv"
.venv/bin/uv pip install --quiet --python "$tmp/venv/bin/python" "${BEAMDEPLOY_SOURCE:-..}" . httptools
cat > "$tmp/beamdeploy-release.json" <<JSON
{"name": "demo", "version": "$version", "app": "demo.app:app"}
JSON
# Built under a temporary name, so a half-built release never looks complete.
mv "$tmp" "$release"
echo "built $release"
