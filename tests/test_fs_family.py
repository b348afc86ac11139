"""Nothing escapes paths.root or the state dir: every writer × every component of its path × every plant.

For each writer (the record, CustomData, the hostname file, authorized_keys, the sudoers drop-in, the KVP
pool, the quarantine rename, and each target of `azprov clean`) and each component of the path it writes, the
component is replaced by an absolute symlink, a relative symlink, a hard link, a FIFO, a socket or a
directory, all pointing into (or standing for) a tree outside the root. The writer then runs in-process under
an alarm. It may succeed (a rename replaces a planted name: contained) or refuse with an AgentError; it may
not hang, raise anything else, change the outside tree by a single byte, or copy a hard-linked file's secret
into a new file. The family's size is asserted, so a shrinking generator fails too. Quick representatives
run in `make test`; the whole family is marked slow.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NamedTuple

import pytest

from statemachine import clean, persistence
from statemachine.config import Config, KvpConfig, PathsConfig, UserConfig
from statemachine.context import Context
from statemachine.errors import AgentError
from statemachine.kvp import KvpPool
from statemachine.persistence import Record
from states import configuring
from states.configure import Facts, hostname, ssh_keys, user
from states.configure.user import Account
from states.configuring import Instance
from states.media import OvfEnv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the admin user needs root")

SECRET = b"outside-secret-do-not-copy\n"
UID = GID = 4321
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB me@host"
KINDS = ("abs_symlink", "rel_symlink", "hardlink", "fifo", "socket", "directory")
HANG_AFTER = 10  # seconds: any writer that blocks this long has hung on a FIFO or a lock


class Tree(NamedTuple):
    tmp: Path
    root: Path
    state: Path
    outside: Path


def make_tree(tmp: Path) -> Tree:
    t = Tree(tmp, tmp / "root", tmp / "state", tmp / "outside")
    for d in ("etc/sudoers.d", "home/azureuser/.ssh", "var/lib/hyperv", "var/lib/dbus", "var/log"):
        (t.root / d).mkdir(parents=True, exist_ok=True)
        (t.outside / d).mkdir(parents=True, exist_ok=True)
    t.state.mkdir(mode=0o700)
    (t.root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nazureuser:x:{UID}:{GID}::/home/azureuser:/bin/sh\n")
    (t.root / "etc/group").write_text(f"root:x:0:\nsudo:x:27:\nazureuser:x:{GID}:\n")
    (t.root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (t.root / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (t.root / "var/log/azprov.log").write_text("log\n")
    (t.root / "var/lib/hyperv/.kvp_pool_1").write_bytes(b"")
    (t.state / "state.json").write_bytes(b"{")  # broken: the quarantine rename moves it
    os.chmod(t.state / "state.json", 0o600)
    for rel in ("etc/hostname", "home/azureuser/.ssh/authorized_keys", "etc/sudoers.d/azprov-azureuser",
                "var/lib/hyperv/.kvp_pool_1", "etc/machine-id", "var/lib/dbus/machine-id", "var/log/azprov.log",
                "state.json", "custom_data", "victim"):
        (t.outside / rel).write_bytes(SECRET)
    return t


def ctx(t: Tree) -> Context:
    return Context(Config(paths=PathsConfig(root=str(t.root), state_dir=str(t.state)),
                          user=UserConfig(groups=()), kvp=KvpConfig(enabled=True)))


FACTS = Facts(Instance(computer_name="newhost", admin_username="azureuser", disable_password_authentication=True))
ACCOUNT = Account("azureuser", UID, GID, "/home/azureuser", "/bin/sh")


def w_record(t: Tree) -> None:
    persistence.save(t.state / "state.json", Record())


def w_quarantine(t: Tree) -> None:
    persistence.quarantine(t.state / "state.json")


def w_custom_data(t: Tree) -> None:
    configuring.save_custom_data(ctx(t), OvfEnv("h", "u", custom_data=b"#cloud-config\n"))


def w_hostname(t: Tree) -> None:
    hostname._write_file(ctx(t), "newhost")


def w_ssh_keys(t: Tree) -> None:
    ssh_keys.install(ctx(t), ACCOUNT, ".ssh/authorized_keys", [KEY])


def w_sudoers(t: Tree) -> None:
    user._write_sudoers(ctx(t), "azureuser", "azureuser ALL=(ALL) NOPASSWD:ALL\n")


def w_kvp(t: Tree) -> None:
    assert isinstance(KvpPool(t.root / "var/lib/hyperv/.kvp_pool_1", root=t.root, boot=lambda: 0.0).write(
        [("k", "v")]), bool)  # never raises


def w_clean(t: Tree) -> None:
    clean.clean(ctx(t).config, logs=True, machine_id=True)


# writer -> (base, the components of its path under that base, outermost first)
WRITERS: dict[str, tuple[Callable[[Tree], None], str, tuple[str, ...]]] = {
    "record": (w_record, "state", ("state.json",)),
    "quarantine": (w_quarantine, "state", ("state.json",)),
    "custom_data": (w_custom_data, "state", ("custom_data",)),
    "hostname": (w_hostname, "root", ("etc", "etc/hostname")),
    "ssh_keys": (w_ssh_keys, "root", ("home", "home/azureuser", "home/azureuser/.ssh",
                                      "home/azureuser/.ssh/authorized_keys")),
    "sudoers": (w_sudoers, "root", ("etc", "etc/sudoers.d", "etc/sudoers.d/azprov-azureuser")),
    "kvp": (w_kvp, "root", ("var", "var/lib", "var/lib/hyperv", "var/lib/hyperv/.kvp_pool_1")),
    "clean": (w_clean, "root", ("var", "var/log", "var/log/azprov.log", "etc/machine-id", "var/lib/dbus",
                                "var/lib/dbus/machine-id")),
}
FAMILY = [(w, c, k) for w, (_, _, comps) in WRITERS.items() for c in comps for k in KINDS]
FAMILY_SIZE = 6 * (1 + 1 + 1 + 2 + 4 + 3 + 4 + 6)
QUICK = {("ssh_keys", "home/azureuser/.ssh", "abs_symlink"), ("ssh_keys", "home/azureuser/.ssh/authorized_keys",
                                                             "hardlink"),
         ("kvp", "var/lib/hyperv/.kvp_pool_1", "fifo"), ("kvp", "var/lib/hyperv", "rel_symlink"),
         ("sudoers", "etc/sudoers.d", "abs_symlink"), ("clean", "var/log", "abs_symlink"),
         ("clean", "var/lib/dbus", "rel_symlink"), ("record", "state.json", "socket"),
         ("hostname", "etc/hostname", "hardlink"), ("custom_data", "custom_data", "fifo")}


def test_the_family_has_its_size() -> None:
    assert len(FAMILY) == FAMILY_SIZE == 132
    assert QUICK <= set(FAMILY)


def plant(t: Tree, base: Path, component: str, kind: str) -> None:
    path = base / component
    target = t.outside / component
    if path.is_dir() and not path.is_symlink():
        for p in sorted(path.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "abs_symlink":
        path.symlink_to(target)
    elif kind == "rel_symlink":
        path.symlink_to(os.path.relpath(target, path.parent))
    elif kind == "hardlink":
        os.link(t.outside / "victim" if target.is_dir() else target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        os.mknod(path, 0o600 | stat.S_IFSOCK)
    else:
        path.mkdir()
        (path / "inner").write_bytes(b"planted\n")  # a directory that is not empty cannot be renamed over


def digest(tree: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(tree.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(tree)}|{stat.S_IFMT(st.st_mode)}|{stat.S_IMODE(st.st_mode)}|{st.st_uid}".encode())
        if stat.S_ISREG(st.st_mode):
            h.update(p.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode())
    return h.hexdigest()


class Hung(BaseException):
    pass


@contextmanager
def watchdog(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hung()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_case(tmp: Path, writer: str, component: str, kind: str) -> None:
    t = make_tree(tmp)
    func, base_name, _ = WRITERS[writer]
    base = t.state if base_name == "state" else t.root
    plant(t, base, component, kind)
    before = digest(t.outside)
    try:
        with watchdog(HANG_AFTER):
            func(t)
    except Hung:
        pytest.fail(f"{writer} hung on a {kind} at {component}")
    except AgentError as e:  # refused (or failed) with our own error: fine, if it says where
        assert str(e)
    assert digest(t.outside) == before, f"{writer} changed the outside tree through a {kind} at {component}"
    for p in (t.root, t.state):
        for f in p.rglob("*"):
            st = f.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                assert SECRET not in f.read_bytes(), f"{writer} copied the hard-linked secret into {f}"


@pytest.mark.parametrize("writer, component, kind", sorted(QUICK))
def test_quick_representatives(tmp_path: Path, writer: str, component: str, kind: str) -> None:
    run_case(tmp_path, writer, component, kind)


@pytest.mark.slow
@pytest.mark.parametrize("writer, component, kind", FAMILY)
def test_whole_family(tmp_path: Path, writer: str, component: str, kind: str) -> None:
    run_case(tmp_path, writer, component, kind)
