"""The `ssh_keys` configure step: IMDS `compute.publicKeys` (or the media's keys) into authorized_keys.

Pure part: `check_keys` validates key lines (a known type, a base64 body whose embedded type matches) and
`merge_authorized_keys` adds the valid ones to an existing file's text, keeping every existing line and never
repeating a key already there (with or without options or comment). I/O part: each key goes to its `path`,
which must resolve inside the user's home (default `~/.ssh/authorized_keys`). Every component from
`paths.root` down is walked by `statemachine.fs` without following links, so a symlink planted anywhere on
the way (`.ssh -> /root/.ssh`, a home that is a link) stops the step instead of redirecting the write, and a
hard-linked key file is never read into the new one; the file is replaced atomically, mode 0600 in a 0700
directory, owned by the user.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import posixpath
from collections.abc import Iterable

from statemachine import fs
from statemachine.context import Context
from statemachine.errors import ConfigureError, RecoverableError
from statemachine.log import fields
from statemachine.text import clean
from states.configure import Change, Facts
from states.configure.user import Account, admin_name, lookup

log = logging.getLogger(__name__)

KEY_TYPES = frozenset({
    "ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa-cert-v01@openssh.com", "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com", "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
})
MAX_KEY = 16 << 10
MAX_FILE = 1 << 20
DEFAULT_PATH = ".ssh/authorized_keys"


# ---- pure: key lines ------------------------------------------------------------------------------------

def check_key(key: str) -> str | None:
    """Why `key` is not a usable authorized_keys line (no options), or None."""
    if len(key) > MAX_KEY:
        return "longer than 16 KiB"
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in key):
        return "contains a line break or control character"
    tokens = key.split()
    if len(tokens) < 2:
        return "not '<type> <base64> [comment]'"
    if tokens[0] not in KEY_TYPES:
        return f"unknown key type {tokens[0][:40]!r}"
    # Padding only at the end, whole quanta: b64decode(validate=True) before Python 3.11.x accepts data after "=".
    if len(tokens[1]) % 4 or "=" in tokens[1].rstrip("="):
        return "key body is not base64"
    try:
        blob = base64.b64decode(tokens[1], validate=True)
    except (binascii.Error, ValueError):
        return "key body is not base64"
    size = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + size or blob[4:4 + size] != tokens[0].encode():
        return "key body does not match its type"
    return None


def normalize(key: str) -> str:
    return " ".join(key.split())


def check_keys(keys: Iterable[str]) -> tuple[tuple[str, ...], tuple[RecoverableError, ...]]:
    """(valid keys, normalized, in order; one RecoverableError per skipped key)."""
    good, bad = [], []
    for i, key in enumerate(keys):
        problem = check_key(key.strip())
        if problem:
            bad.append(RecoverableError("SSH public key is invalid; skipped", index=i, problem=problem))
        else:
            good.append(normalize(key))
    return tuple(good), tuple(bad)


def _skip_options(line: str) -> str:
    """The rest of an authorized_keys line after its options field (which may quote spaces)."""
    quoted, i = False, 0
    while i < len(line):
        c = line[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return line[i:]
        i += 1
    return ""


def key_identity(line: str) -> tuple[str, str] | None:
    """(type, base64 body) of an authorized_keys line, with or without options; None for anything else."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    tokens = line.split()
    if tokens[0] not in KEY_TYPES:
        tokens = _skip_options(line).split()
    if len(tokens) >= 2 and tokens[0] in KEY_TYPES:
        return tokens[0], tokens[1]
    return None


def merge_authorized_keys(existing: str, new_keys: Iterable[str]) -> str:
    """Existing text with the valid new keys appended, each once. Existing lines are kept byte for byte."""
    present = {key_identity(line) for line in existing.split("\n")}
    added = []
    for key in check_keys(new_keys)[0]:
        identity = key_identity(key)
        if identity not in present:
            present.add(identity)
            added.append(key)
    if not added:
        return existing
    prefix = existing if not existing or existing.endswith("\n") else existing + "\n"
    return prefix + "".join(f"{k}\n" for k in added)


def resolve_path(home: str, path: str | None) -> str:
    """The key file's path relative to the home, or RecoverableError when it would leave the home."""
    if not path:
        return DEFAULT_PATH
    if path.startswith("$HOME/"):  # ovf-env.xml writes "$HOME/<user>/.ssh/...", $HOME being /home
        path = posixpath.dirname(home.rstrip("/")) + path[len("$HOME"):]
    elif path.startswith("~/"):
        path = posixpath.join(home, path[2:])
    full = posixpath.normpath(posixpath.join(home, path))
    home = posixpath.normpath(home)
    if not full.startswith(home.rstrip("/") + "/") or "\0" in full:
        raise RecoverableError("SSH key path is outside the user's home", path=clean(path, 200), home=home)
    return posixpath.relpath(full, home)


# ---- I/O: through statemachine.fs, from paths.root down ------------------------------------------------

def _home(ctx: Context, account: Account) -> str:
    """The home relative to paths.root; it must exist (the user step made it), reached without links."""
    home = posixpath.normpath("/" + account.home).lstrip("/")
    with fs.directory(ctx.root, home) as fd:
        if fd is None:
            raise RecoverableError("user's home directory does not exist", home=account.home)
    return home


def _read_existing(ctx: Context, full: str, rel: str) -> tuple[str, os.stat_result | None]:
    try:
        found = fs.read_file(ctx.root, full, MAX_FILE, single_link=True)
    except fs.Refused as e:
        if "limit" in e.supporting_data:
            raise RecoverableError("SSH key file is too large; left alone", path=rel) from e
        raise
    if found is None:
        return "", None
    return found.data.decode("utf-8", errors="surrogateescape"), found.stat


def install(ctx: Context, account: Account, rel: str, keys: Iterable[str]) -> bool:
    """Merge `keys` into the file at `rel` (relative to the home). True when the file changed."""
    owner = (account.uid, account.gid)
    full = f"{_home(ctx, account)}/{rel}"
    parent = posixpath.dirname(full)
    try:
        existing, st = _read_existing(ctx, full, rel)
        merged = merge_authorized_keys(existing, keys)
        fs.make_dir(ctx.root, parent, 0o700, owner)  # made, or tightened when others could look in
        ok = st is not None and (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*owner, 0o600)
        if merged == existing and ok:
            return False
        fs.atomic_write(ctx.root, full, merged.encode("utf-8", errors="surrogateescape"), 0o600, owner=owner,
                        dir_mode=0o700, dir_owner=owner)
    except OSError as e:
        raise RecoverableError("SSH key file cannot be written", path=rel, error=e.strerror) from e
    return True


def pending(ctx: Context, account: Account, rel: str, keys: Iterable[str]) -> tuple[int, int]:
    """(keys already in the file, keys that would be added); read-only."""
    keys = list(keys)
    try:
        existing = _read_existing(ctx, f"{_home(ctx, account)}/{rel}", rel)[0]
    except OSError as e:
        raise RecoverableError("SSH key file cannot be read", path=rel, error=e.strerror) from e
    merged = merge_authorized_keys(existing, keys)
    before = sum(1 for line in existing.split("\n") if key_identity(line))
    return before, sum(1 for line in merged.split("\n") if key_identity(line)) - before


# ---- the step ------------------------------------------------------------------------------------------

def wanted_keys(facts: Facts) -> tuple[list[tuple[str | None, str]], str, list[RecoverableError]]:
    """[(path, key data)], where they came from, and errors for keys we cannot use at all."""
    if facts.instance.public_keys:
        return [(k.path, k.key_data) for k in facts.instance.public_keys], "IMDS compute.publicKeys", []
    media_keys = facts.media.public_keys if facts.media is not None else ()
    errors = [RecoverableError("SSH key given only as a certificate fingerprint; not supported",
                               fingerprint=clean(k.fingerprint, 64)) for k in media_keys if not k.value]
    return [(k.path, k.value) for k in media_keys if k.value], "provisioning media PublicKeys", errors


def _targets(ctx: Context, facts: Facts) -> tuple[Account | None, dict[str, list[str]], str,
                                                  list[RecoverableError]]:
    found = admin_name(facts)
    keys, source, errors = wanted_keys(facts)
    if found is None:
        raise RecoverableError("no admin username in the instance metadata or the provisioning media")
    account = lookup(ctx, found[0])
    home = account.home if account else f"/home/{found[0]}"
    targets: dict[str, list[str]] = {}
    for path, data in keys:
        try:
            targets.setdefault(resolve_path(home, path), []).append(data)
        except RecoverableError as e:
            errors.append(e)
    errors += check_keys(k for ks in targets.values() for k in ks)[1]
    return account, targets, source, errors


def plan(ctx: Context, facts: Facts) -> Change | None:
    account, targets, source, _ = _targets(ctx, facts)
    if not targets:
        return None
    if account is None:
        total = sum(len(check_keys(ks)[0]) for ks in targets.values())
        return Change("ssh_keys", "user absent", f"+{total} key(s) once the user exists", source)
    before = added = 0
    for rel, keys in targets.items():
        b, a = pending(ctx, account, rel, keys)
        before, added = before + b, added + a
    if not added:
        return None
    where = ", ".join(f"~/{rel}" for rel in targets)
    return Change("ssh_keys", f"{before} key(s) in {where}", f"{before + added} key(s)", source)


def apply(ctx: Context, facts: Facts) -> Change | None:
    try:
        change = plan(ctx, facts)
    except RecoverableError:
        change = None  # one unusable file (a planted symlink, say) must not keep the keys from the others
    account, targets, source, errors = _targets(ctx, facts)
    if targets and account is None:
        raise ConfigureError("admin user does not exist; put the user step before ssh_keys",
                             username=(admin_name(facts) or ("?",))[0])
    for rel, keys in targets.items():
        assert account is not None
        try:
            changed = install(ctx, account, rel, keys)
        except RecoverableError as e:
            errors.append(e)
            continue
        if changed:
            log.info("SSH keys installed", extra=fields(user=account.name, path=f"~/{rel}", source=source))
    if errors:
        first = errors[0]
        raise RecoverableError("some SSH keys were not installed", count=len(errors), first=first.reason,
                               **{f"first_{k}": v for k, v in first.supporting_data.items()})
    return change
