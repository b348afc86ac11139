"""The `ssh_keys` configure step: IMDS `compute.publicKeys` (or the media's keys) into authorized_keys.

Pure part: `check_keys` validates key lines (a known type, a base64 body whose embedded type matches) and
`merge_authorized_keys` adds the valid ones to an existing file's text, keeping every existing line and never
repeating a key already there (with or without options or comment). I/O part: each key goes to its `path`,
which must resolve inside the user's home (default `~/.ssh/authorized_keys`). Below the home every
component is opened relative to its parent's file descriptor with O_NOFOLLOW, so a symlink planted in the
home (`.ssh -> /root/.ssh`) stops the step instead of redirecting the write; the file is replaced
atomically (temp file, fsync, rename, fsync directory), mode 0600 in a 0700 directory, owned by the user.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import posixpath
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from statemachine.context import Context
from statemachine.errors import ConfigureError, RecoverableError
from statemachine.log import fields
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
        raise RecoverableError("SSH key path is outside the user's home", path=path[:200], home=home)
    return posixpath.relpath(full, home)


# ---- I/O: walking the home with directory file descriptors ---------------------------------------------

def _refuse(e: OSError, where: str) -> RecoverableError:
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return RecoverableError("symlink or non-directory in the user's home; refusing to follow it", path=where)
    return RecoverableError("SSH key file cannot be written", path=where, error=e.strerror)


@contextmanager
def _parent_dir(ctx: Context, account: Account, rel: str, create: bool) -> Iterator[int | None]:
    """A descriptor of the key file's directory, walked from the home without following symlinks.
    Yields None when a directory is missing and `create` is false."""
    opened: list[int] = []
    try:
        try:
            fd = os.open(ctx.root_path(account.home), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RecoverableError("user's home directory cannot be opened", home=account.home,
                                   error=e.strerror) from e
        opened.append(fd)
        parts = rel.split("/")[:-1]
        for i, part in enumerate(parts):
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    yield None
                    return
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    os.fchown(fd, account.uid, account.gid)
                except OSError as e:
                    raise _refuse(e, "/".join(parts[:i + 1])) from e
            except OSError as e:
                raise _refuse(e, "/".join(parts[:i + 1])) from e
            opened.append(fd)
        yield fd
    finally:
        for fd in opened:
            os.close(fd)


def _read_existing(dirfd: int, name: str, rel: str) -> tuple[str, os.stat_result | None]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
    except FileNotFoundError:
        return "", None
    except OSError as e:
        raise _refuse(e, rel) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecoverableError("SSH key file is not a regular file; left alone", path=rel)
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise RecoverableError("SSH key file is too large; left alone", path=rel)
    return data.decode("utf-8", errors="surrogateescape"), st


def _replace(dirfd: int, name: str, text: str, account: Account) -> None:
    tmp = f".{name}.azprov-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    try:
        try:
            os.write(fd, text.encode("utf-8", errors="surrogateescape"))
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)  # replaces a planted symlink, never follows
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise
    os.fsync(dirfd)


def install(ctx: Context, account: Account, rel: str, keys: Iterable[str]) -> bool:
    """Merge `keys` into the file at `rel` (relative to the home). True when the file changed."""
    name = rel.rsplit("/", 1)[-1]
    with _parent_dir(ctx, account, rel, create=True) as dirfd:
        assert dirfd is not None
        try:
            existing, st = _read_existing(dirfd, name, rel)
            merged = merge_authorized_keys(existing, keys)
            dir_st = os.fstat(dirfd)
            if (dir_st.st_uid, dir_st.st_gid) != (account.uid, account.gid) or dir_st.st_mode & 0o077:
                os.fchown(dirfd, account.uid, account.gid)
                os.fchmod(dirfd, 0o700)
            ok = st is not None and (st.st_uid, st.st_gid, st.st_mode & 0o777) == (account.uid, account.gid, 0o600)
            if merged == existing and ok:
                return False
            _replace(dirfd, name, merged, account)
        except OSError as e:
            raise _refuse(e, rel) from e
    return True


def pending(ctx: Context, account: Account, rel: str, keys: Iterable[str]) -> tuple[int, int]:
    """(keys already in the file, keys that would be added); read-only."""
    name = rel.rsplit("/", 1)[-1]
    keys = list(keys)
    with _parent_dir(ctx, account, rel, create=False) as dirfd:
        try:
            existing = _read_existing(dirfd, name, rel)[0] if dirfd is not None else ""
        except OSError as e:
            raise _refuse(e, rel) from e
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
                               fingerprint=k.fingerprint[:64]) for k in media_keys if not k.value]
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
