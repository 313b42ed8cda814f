#!/usr/bin/env bash
# The Python 3.12 wheels that the GPU machine's image lacks, into .whl/ (ignored by git; carry it there):
#   bash bench/device_wheels.sh            # with the project's environment active: its versions are pinned
# bench/gpu_session.sh installs them first. The image has jax, flax, optax, orbax, etils, torch and
# scikit-image (/work/.library/device/KINDS.md); train.py needs these besides.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
packages=(grain ml_collections tensorboardX simplejpeg array_record dm-tree more-itertools portpicker pycocotools)
pinned=$("$python" - "${packages[@]}" <<'PY'
import sys
from importlib import metadata

for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)  # not installed here: the newest wheel
PY
)
mkdir -p .whl
platforms=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086  # one requirement per word
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform any -d .whl $pinned
du -sh .whl
