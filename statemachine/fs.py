"""Every file azprov creates, reads for reuse, replaces, renames or deletes goes through here.

Paths are given as a trusted base directory (`paths.root` or `paths.state_dir`, from the config) and a
path relative to it. Each component below the base is opened relative to its parent's descriptor with
O_NOFOLLOW, so nothing planted in the tree (a symlink, absolute or relative, a FIFO, a socket, a device
node, a file where a directory belongs) can carry a write outside the base or hang the run: such a
component is refused with `Refused`, a recoverable error naming the path and what was found there.

- `atomic_write` replaces a file so a power cut leaves the old content or the new, never half: a temp file
  in the same directory (created O_EXCL, never through a link), fsync, rename over the name (which
  replaces a planted link instead of following it), fsync of the directory.
- `read_file` opens with O_NONBLOCK (a FIFO cannot hang us) and checks fstat before reading: a regular
  file, of the expected owner, and with one link when its content will be reused (a hard link to a
  root-only file would otherwise be copied into a file the user owns).
- `open_append` is the same checks for a file that is appended to (the KVP pool).
- `remove`, `rename` and `symlink` work on the name itself, never on what a link points to.

Modes are set with fchmod after creation, so the umask never widens or narrows them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from statemachine.errors import RecoverableError
from statemachine.text import clean

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINK_ERRORS = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP)
Owner = tuple[int, int]  # (uid, gid)


class Refused(RecoverableError):
    """A path component is not what azprov writes through: a link, a FIFO, a socket, a device, a file of
    another owner. Nothing was written; the rest of provisioning goes on."""


class Found(NamedTuple):
    data: bytes
    stat: os.stat_result


def what_is(dirfd: int, name: str) -> str:
    """What sits at `name` in words, for an error message: 'a symlink to /etc', 'a FIFO', …"""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            return f"a symlink to {clean(os.readlink(name, dir_fd=dirfd), 200)!r}"
        except OSError:
            return "a symlink"
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    for test, word in kinds:
        if test(mode):
            return word
    if st.st_nlink > 1:
        return f"a hard-linked file ({st.st_nlink} links)"
    return "a regular file"


def _refused(base: Path, parts: Sequence[str], dirfd: int) -> Refused:
    found = what_is(dirfd, parts[-1])
    kind = found.split(" (")[0].split(" to ")[0]
    reason = _REASONS.get(kind, "path component is not a plain directory or file; refusing to go through it")
    return Refused(reason, path=clean(str(base.joinpath(*parts)), 300), found=found)


_REASONS = {
    "a symlink": "symlink in the path; refusing to follow it",
    "a hard-linked file": "hard-linked file in the path; refusing to reuse or replace through it",
    "a FIFO": "FIFO in the path; refusing to open it",
    "a socket": "socket in the path; refusing to open it",
    "a character device": "device node in the path; refusing to open it",
    "a block device": "device node in the path; refusing to open it",
    "a directory": "directory where a file belongs; refusing to use it",
    "a regular file": "file where a directory belongs; refusing to go through it",
}


def _split(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\0" in p for p in parts):
        raise Refused("path is not a plain relative path", path=clean(rel, 300))
    return parts


def _open_base(base: Path) -> int:
    return os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _fix(fd: int, mode: int, owner: Owner | None) -> None:
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, mode)


@contextmanager
def directory(base: Path, rel: str = "", *, create: bool = False, mode: int = 0o755,
              owner: Owner | None = None) -> Iterator[int | None]:
    """A descriptor of the directory `rel` under `base`, walked without following anything. Missing
    directories are made (`mode`, `owner`) when `create`; otherwise the descriptor is None."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused("path is not a plain relative path", path=clean(rel, 300))
    try:
        fd = _open_base(base)
    except FileNotFoundError:
        if not create:
            yield None
            return
        base.mkdir(mode=0o700, parents=True, exist_ok=True)  # the config's state dir: trusted, private
        fd = _open_base(base)
    try:
        for i, part in enumerate(parts):
            try:
                child = _open(base, parts[:i + 1], fd, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    fd = -1
                    yield None
                    return
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)  # closed until fixed below: nobody else looks in
                except FileExistsError:
                    pass  # made meanwhile: opened and checked below like any other
                child = _open(base, parts[:i + 1], fd, os.O_RDONLY | os.O_DIRECTORY)
                _fix(child, mode, owner)
            os.close(fd)
            fd = child
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)


def make_dir(base: Path, rel: str, mode: int, owner: Owner | None = None) -> None:
    """Make sure `rel` is a directory (created as needed, never through a link) with exactly `mode`."""
    with directory(base, rel, create=True, mode=mode, owner=owner) as fd:
        assert fd is not None
        _fix(fd, mode, owner)


def temp_name(name: str) -> str:
    """Beside the file, hidden, with a dot (sudo's includedir skips such names) and `.tmp` at the end."""
    return f".{name}-{os.urandom(4).hex()}.tmp"  # not `secrets`: it loads hashlib and hmac at every boot


@contextmanager
def _parent(base: Path, rel: str, **walk: Any) -> Iterator[tuple[int | None, list[str]]]:
    """The descriptor of `rel`'s directory (None when missing) and `rel`'s components."""
    parts = _split(rel)
    with directory(base, "/".join(parts[:-1]), **walk) as dirfd:
        yield dirfd, parts


def _open(base: Path, parts: Sequence[str], dirfd: int, flags: int, mode: int = 0o600) -> int:
    """Open the last of `parts` in `dirfd`, never through a link and never blocking (a FIFO); a link or
    other thing where a plain file or directory belongs is refused."""
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dirfd)
    except OSError as e:
        if e.errno in _LINK_ERRORS:
            raise _refused(base, parts, dirfd) from e
        raise


def atomic_write(base: Path, rel: str, data: bytes, mode: int = 0o644, *, owner: Owner | None = None,
                 dir_mode: int = 0o755, dir_owner: Owner | None = None,
                 check: Callable[[str], None] | None = None,
                 before_rename: Callable[[], None] | None = None,
                 after_rename: Callable[[], None] | None = None) -> None:
    """Replace `base/rel` with `data`. `check(path_of_temp_file)` may refuse the content (visudo) by raising;
    the hooks are for crash tests. Missing parent directories are made with `dir_mode`."""
    with _parent(base, rel, create=True, mode=dir_mode, owner=dir_owner) as (dirfd, parts):
        assert dirfd is not None
        tmp = temp_name(parts[-1])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                _fix(fd, mode, owner)
                os.fsync(fd)
            finally:
                os.close(fd)
            if check is not None:
                check(str(base.joinpath(*parts[:-1], tmp)))
            if before_rename is not None:
                before_rename()
            os.rename(tmp, parts[-1], src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            _unlink_quietly(dirfd, tmp)
            raise
        if after_rename is not None:
            after_rename()
        _fsync(dirfd)


def _unlink_quietly(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)  # makes a rename durable across a power cut
    except OSError:
        pass


def read_file(base: Path, rel: str, limit: int, *, owner: int | None = None, single_link: bool = False,
              private: bool = False) -> Found | None:
    """The file's bytes and stat, or None when it (or a directory on the way) does not exist. Refuses
    anything but a regular file; one of another `owner`; one with several links when `single_link`; one
    that others may write when `private`; one larger than `limit` bytes."""
    with _parent(base, rel) as (dirfd, parts):
        if dirfd is None:
            return None
        try:
            fd = _open(base, parts, dirfd, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            _check_file(base, parts, dirfd, st, owner, single_link, private)
            chunks, size = [], 0
            while size <= limit:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    if size > limit:
        raise Refused("file is too large to be ours", path=clean(str(base.joinpath(*parts)), 300), limit=limit)
    return Found(b"".join(chunks), st)


def _check_file(base: Path, parts: list[str], dirfd: int, st: os.stat_result, owner: int | None,
                single_link: bool, private: bool) -> None:
    if not stat.S_ISREG(st.st_mode) or (single_link and st.st_nlink != 1):
        raise _refused(base, parts, dirfd)
    path = clean(str(base.joinpath(*parts)), 300)
    if owner is not None and st.st_uid != owner:
        raise Refused("file is owned by another user; refusing to use it", path=path, uid=st.st_uid,
                      expected=owner)
    if private and st.st_mode & 0o022:
        raise Refused("file is writable by others; refusing to use it", path=path, mode=oct(st.st_mode & 0o777))


def open_append(base: Path, rel: str, mode: int = 0o644) -> int | None:
    """A descriptor for appending to `base/rel` (created when missing), or None when its directory does not
    exist. Refuses what `read_file` refuses, and a file with other hard links. The caller closes it."""
    with _parent(base, rel) as (dirfd, parts):
        if dirfd is None:
            return None
        fd = _open(base, parts, dirfd, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        try:
            _check_file(base, parts, dirfd, os.fstat(fd), os.geteuid(), True, False)
        except BaseException:
            os.close(fd)
            raise
        return fd


def names(base: Path, rel: str = "") -> list[str]:
    """The entries of the directory `rel` (none when it does not exist)."""
    with directory(base, rel) as fd:
        return [] if fd is None else sorted(os.listdir(fd))


def exists(base: Path, rel: str) -> bool:
    """Whether anything is at the name `rel` itself (a link is not followed, nor any on the way)."""
    with _parent(base, rel) as (dirfd, parts):
        try:
            return dirfd is not None and os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False) is not None
        except FileNotFoundError:
            return False


def check_plain(base: Path, rel: str) -> os.stat_result | None:
    """Refuse `rel` unless it is absent or a regular file with one link, reached without links: what a
    tool that rewrites the file in place of azprov may meet. The stat when it exists."""
    with _parent(base, rel) as (dirfd, parts):
        try:
            st = None if dirfd is None else os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if dirfd is not None and st is not None and (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1):
            raise _refused(base, parts, dirfd)
        return st


def remove(base: Path, rel: str) -> bool:
    """Delete the name `rel` (a directory with everything in it). False when there was nothing."""
    with _parent(base, rel) as (dirfd, parts):
        return dirfd is not None and _remove_at(dirfd, parts[-1])


def _remove_at(dirfd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return True
    fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
    try:
        for entry in os.listdir(fd):
            _remove_at(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)
    return True


def rename(base: Path, rel: str, new_name: str) -> bool:
    """Rename `rel` to `new_name` in the same directory (the name itself, even a link); fsync the
    directory. False when there was nothing to rename."""
    _split(new_name)
    with _parent(base, rel) as (dirfd, parts):
        if dirfd is None:
            return False
        try:
            os.rename(parts[-1], new_name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except FileNotFoundError:
            return False
        _fsync(dirfd)
        return True


def symlink(base: Path, rel: str, target: str) -> None:
    """Make `rel` a symlink to `target`, replacing whatever name was there in one rename."""
    with _parent(base, rel) as (dirfd, parts):
        if dirfd is None:
            raise FileNotFoundError(errno.ENOENT, "directory missing", str(base.joinpath(*parts[:-1])))
        tmp = temp_name(parts[-1])
        os.symlink(target, tmp, dir_fd=dirfd)
        try:
            os.rename(tmp, parts[-1], src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            _unlink_quietly(dirfd, tmp)
            raise
        _fsync(dirfd)
