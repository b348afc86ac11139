#!/bin/sh
# `make deb`: dist/azprov_<version>_all.deb, built by dpkg-buildpackage from debian/ with dh and pybuild.
#
# Installs the Build-Depends (and lintian) with apt when they are missing, as .ci/run installs what the tests
# need. Builds in a scratch copy of the tree, so dpkg-buildpackage's files beside the source directory land
# there and not beside the checkout. Skips the test suite (nocheck): CI runs it. Then runs lintian and fails
# on any error (E:) it reports.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

version=$(dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/^azprov (\([^)]*\)).*/\1/p' debian/changelog)

missing=$(dpkg-checkbuilddeps 2>&1 | sed -n 's/.*Unmet build dependencies: //p' | sed 's/([^)]*)//g')
command -v lintian >/dev/null || missing="$missing lintian"
if [ -n "$(echo "$missing" | tr -d ' ')" ]; then
  echo "build-deb: installing build dependencies:$missing"
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
src="$scratch/azprov-$version"
mkdir "$src"
# The tree as it is (committed or not), minus what is local to this checkout.
tar -c --exclude=./.git --exclude='./.venv*' --exclude=./dist --exclude=./build --exclude=./bench/cache \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./.mypy_cache \
    --exclude=./.ruff_cache --exclude=./.hypothesis --exclude=./debian/azprov --exclude=./debian/.debhelper \
    --exclude=./.pybuild . | tar -x -C "$src"
# The distribution's interpreters only: a pyenv shim or an active venv earlier on PATH would build the
# package with a Python the package will never run on.
(cd "$src" && unset VIRTUAL_ENV PYTHONPATH PYTHONHOME && PATH=/usr/sbin:/usr/bin:/sbin:/bin DEB_BUILD_OPTIONS="nocheck${DEB_BUILD_OPTIONS:+ $DEB_BUILD_OPTIONS}" \
   dpkg-buildpackage -us -uc -b --no-sign)

mkdir -p dist
deb="dist/azprov_${version}_all.deb"
cp "$scratch/azprov_${version}_all.deb" "$deb"
echo "build-deb: $deb"
dpkg-deb --info "$deb" | sed -n 's/^ *\(Installed-Size\|Depends\):/build-deb:   \1:/p'

echo "build-deb: lintian $deb"
lintian --info --display-info --fail-on error "$deb"
