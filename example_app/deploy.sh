#!/usr/bin/env bash
# Build the demo as it is now into an artifact and swap the running service to it.
set -euo pipefail
cd "$(dirname "$0")"
version="${1:?usage: ./deploy.sh VERSION}"
.venv/bin/beamdeploy build . -o dist --version "$version"
exec .venv/bin/beamdeploy upgrade "dist/demo-$version.tar.gz" --state-dir .beamdeploy
