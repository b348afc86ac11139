#!/bin/sh
# `make install`: azprov's venv, systemd unit, preset, man pages and the (comment-only) configuration.
#
# Environment: DESTDIR (staging root, default none), PREFIX (default /usr; the venv goes to $PREFIX/lib/azprov),
# PYTHON (default python3), WHEELHOUSE (a `make wheelhouse` directory: install offline from it; default: the
# package index), UNITDIR, PRESETDIR, AZPROV_INSTALL_MODE (auto | host | chroot | relocate).
#
# A venv records absolute paths (the interpreter in pyvenv.cfg and bin/python, its own path in every script's
# #! line), so one built at $DESTDIR$PREFIX/lib/azprov does not work once $DESTDIR becomes "/". Hence:
#  - host:     no DESTDIR: `python -m venv` right where it will run.
#  - chroot:   DESTDIR is a root file system with its own /usr/bin/python3 and we are root (image builds, the
#              boot test): the venv is made by the image's own Python inside `chroot $DESTDIR`, at its final
#              path, so interpreter version, ABI and paths are the image's. Installs from a wheelhouse.
#  - relocate: any other DESTDIR (distribution packaging): the venv is made with PYTHON under DESTDIR, then
#              the DESTDIR prefix is removed from the #! lines and scripts. Valid only when PYTHON is the
#              target's interpreter at the same path (e.g. PYTHON=/usr/bin/python3 on the target's distro).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PREFIX=${PREFIX:-/usr}
DESTDIR=${DESTDIR:-}
WHEELHOUSE=${WHEELHOUSE:-}
UNITDIR=${UNITDIR:-/usr/lib/systemd/system}
PRESETDIR=${PRESETDIR:-/usr/lib/systemd/system-preset}
MODE=${AZPROV_INSTALL_MODE:-auto}
VENV="$PREFIX/lib/azprov"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

if [ "$MODE" = auto ]; then
  if [ -z "$DESTDIR" ]; then MODE=host
  elif [ -x "$DESTDIR/usr/bin/python3" ] && [ "$(id -u)" = 0 ]; then MODE=chroot
  else MODE=relocate
  fi
fi
# Before anything is written: the venv must be able to run on the target. A venv names its interpreter by
# absolute path (pyvenv.cfg home=, bin/python) and its compiled wheels match that interpreter's version.
check_target() {
  case "$MODE" in
    host)
      "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON lacks the venv module (Debian/Ubuntu: apt install python3-venv), or pass PYTHON=<a python3 with venv>"
      ;;
    chroot)
      chroot "$DESTDIR" /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null \
        || die "the image's /usr/bin/python3 lacks the venv module: install python3-venv into $DESTDIR first"
      ;;
    relocate)
      command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found; pass PYTHON=<the target's interpreter path>"
      # The interpreter the venv will name (a venv's python names its base), its version and its stdlib.
      set -- $("$PYTHON" -c 'import sys, sysconfig
print(getattr(sys, "_base_executable", None) or sys.executable, "%d.%d" % sys.version_info[:2],
      sysconfig.get_paths()["stdlib"])')
      base=$1 version=$2 stdlib=$3
      { [ -x "$DESTDIR$base" ] && [ -f "$DESTDIR$stdlib/os.py" ]; } \
        || die "$DESTDIR has no Python $version at $base: pass PYTHON= the target's interpreter path (e.g. PYTHON=/usr/bin/python3), the same version on this machine"
      [ -f "$DESTDIR$stdlib/venv/__init__.py" ] \
        || die "$DESTDIR's Python $version has no venv module ($stdlib/venv): install python3-venv into the target first"
      ;;
    *) die "AZPROV_INSTALL_MODE=$MODE: expected auto, host, chroot or relocate" ;;
  esac
}
check_target

if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || die "WHEELHOUSE=$WHEELHOUSE is not a directory (run make wheelhouse)"
  WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
fi

# pip arguments for the azprov distribution: offline from the wheelhouse, or the project from the index.
pip_source() {  # $1: the wheelhouse path as the installing pip sees it
  if [ -n "$WHEELHOUSE" ]; then echo "--no-index --find-links $1 azprov"; else echo "$(pwd)"; fi
}

install_host() {
  say "venv $VENV ($PYTHON)"
  "$PYTHON" -m venv --clear "$VENV"
  # shellcheck disable=SC2046
  "$VENV/bin/pip" install --quiet $(pip_source "$WHEELHOUSE")
}

install_chroot() {
  [ -n "$WHEELHOUSE" ] || die "installing into the image root $DESTDIR needs WHEELHOUSE= (make wheelhouse)"
  stage="/tmp/azprov-wheelhouse.$$"
  mkdir -p "$DESTDIR$stage"
  trap 'rm -rf "$DESTDIR$stage"' EXIT
  cp "$WHEELHOUSE"/*.whl "$DESTDIR$stage/"
  say "venv $VENV inside chroot $DESTDIR ($(chroot "$DESTDIR" /usr/bin/python3 --version))"
  chroot "$DESTDIR" /usr/bin/python3 -m venv --clear "$VENV"
  # shellcheck disable=SC2046
  chroot "$DESTDIR" "$VENV/bin/pip" install --quiet $(pip_source "$stage")
}

install_relocate() {
  target="$DESTDIR$VENV"
  say "venv $target ($PYTHON), relocated to $VENV"
  "$PYTHON" -m venv --clear "$target"
  # shellcheck disable=SC2046
  "$target/bin/pip" install --quiet $(pip_source "$WHEELHOUSE")
  # Scripts name their interpreter by absolute path; drop the staging prefix from those paths.
  for f in "$target"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if head -c 2 "$f" | grep -q '#!' || grep -q "$target" "$f"; then
      sed -i "s|$target|$VENV|g" "$f"
    fi
  done
  sed -i "s|$target|$VENV|g" "$target/pyvenv.cfg"
}

case "$MODE" in
  host) install_host ;;
  chroot) install_chroot ;;
  relocate) install_relocate ;;
  *) die "AZPROV_INSTALL_MODE=$MODE: expected auto, host, chroot or relocate" ;;
esac

# pip's generated console script imports `re` before azprov's own code: ~7 ms, about half of
# `python -c pass`, on every later boot of every VM (bench P4). This plain launcher does the same without it.
printf '#!%s/bin/python\nimport sys\n\nfrom statemachine.launch import main\n\nsys.exit(main())\n' "$VENV" \
  > "$DESTDIR$VENV/bin/azprov"
chmod 0755 "$DESTDIR$VENV/bin/azprov"
# `azprov --status` for people: on PATH, pointing into the venv.
install -d -m 0755 "$DESTDIR$PREFIX/bin"
ln -sfn "$VENV/bin/azprov" "$DESTDIR$PREFIX/bin/azprov"

say "unit $DESTDIR$UNITDIR/azprov.service, preset, /etc/azprov"
install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$PRESETDIR" "$DESTDIR/etc/azprov"
sed "s|/usr/lib/azprov/|$VENV/|g" conf/azprov.service > "$DESTDIR$UNITDIR/azprov.service"
chmod 0644 "$DESTDIR$UNITDIR/azprov.service"
install -m 0644 conf/90-azprov.preset "$DESTDIR$PRESETDIR/90-azprov.preset"
install -d -m 0755 "$DESTDIR$PREFIX/share/man/man8" "$DESTDIR$PREFIX/share/man/man5"
gzip -9nc man/azprov.8 > "$DESTDIR$PREFIX/share/man/man8/azprov.8.gz"
gzip -9nc man/azprov.toml.5 > "$DESTDIR$PREFIX/share/man/man5/azprov.toml.5.gz"
chmod 0644 "$DESTDIR$PREFIX/share/man/man8/azprov.8.gz" "$DESTDIR$PREFIX/share/man/man5/azprov.toml.5.gz"
# Never overwrite an administrator's configuration.
if [ -e "$DESTDIR/etc/azprov/azprov.toml" ]; then
  say "keeping existing $DESTDIR/etc/azprov/azprov.toml"
else
  install -m 0644 conf/azprov.toml "$DESTDIR/etc/azprov/azprov.toml"
fi
say "done ($MODE). Enable with: systemctl ${DESTDIR:+--root=$DESTDIR }preset azprov.service"
