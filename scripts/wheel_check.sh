#!/usr/bin/env bash
# Build a wheel, install it (not editable) into a fresh virtual environment outside the checkout,
# and run one real job from it: index a few of the bundled photos with the shipped models and search
# them. Proves the wheel carries the configs, the shipped models and every other asset.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/itm-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$work/venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/itm-*.whl
cd "$work"  # away from src/: only the installed wheel can be imported
assets=$("$work/venv/bin/python" -c "import itm, pathlib; print(pathlib.Path(itm.__file__).parent / 'assets')")
mkdir photos
bundled=("$assets"/flickr8k_mini/images/*.jpg)  # a glob, not ls | head: pipefail would see head's SIGPIPE
cp "${bundled[@]:0:12}" photos/
export ITM_CACHE="$work/cache"
"$work/venv/bin/itm" index --images photos --out photos-index --no-progress
"$work/venv/bin/itm" search --index photos-index --text "a dog runs on the grass" -k 3
"$work/venv/bin/python" -c "import itm.models; from itm.config import load_config; print('named config:', load_config('bssan_cpu_lite2').model.name)"
echo "wheel check: passed"
