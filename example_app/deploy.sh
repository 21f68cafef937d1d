#!/usr/bin/env bash
# Build a release of the demo as it is now and swap the running service to it.
set -euo pipefail
cd "$(dirname "$0")"
version="${1:?usage: ./deploy.sh VERSION}"
./make_release.sh "$version"
exec .venv/bin/beamdeploy upgrade "releases/demo-$version" --state-dir .beamdeploy
