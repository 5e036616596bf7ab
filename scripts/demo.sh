#!/usr/bin/env bash
# One command for a new user: set up, then run the main job on the bundled Flickr8k subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec itm demo "$@"
