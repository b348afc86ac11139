#!/bin/sh
# `make wheelhouse`: the azprov wheel and every runtime dependency as wheels, in a directory and a tarball,
# so an image build can install azprov with no package index (`make install WHEELHOUSE=dist/wheelhouse`).
#
# The wheels match the interpreter that runs this script (PYTHON, default python3): lxml is a compiled
# wheel, so build the wheelhouse with the same Python minor version as the image's /usr/bin/python3.
# Environment: PYTHON, WHEELHOUSE (output directory, default dist/wheelhouse).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${WHEELHOUSE:-dist/wheelhouse}
export PIP_DISABLE_PIP_VERSION_CHECK=1

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
rm -rf "$OUT"
mkdir -p "$OUT"
# The project and its dependency closure for this interpreter (binary wheels where PyPI has them).
"$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT" .
# tomli is only needed below Python 3.11: carry its pure-Python wheel so the directory serves those too.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --abi none \
  --platform any --python-version 3.9 --dest "$OUT" 'tomli>=1.1'
tarball="$(dirname "$OUT")/azprov-wheelhouse-$version-py$pyver.tar.gz"
tar -C "$(dirname "$OUT")" -czf "$tarball" "$(basename "$OUT")"
echo "wheelhouse: $OUT ($(ls "$OUT" | wc -l) wheels, for Python $pyver)"
echo "tarball:    $tarball"
