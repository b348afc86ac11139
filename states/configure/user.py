"""The `user` configure step: the admin account from IMDS `compute.osProfile.adminUsername`.

Creates the account when missing (`useradd`), adds it to the configured groups (`user.groups`; "sudo" and
"wheel" stand in for each other, whichever the image has), writes the sudoers drop-in
`/etc/sudoers.d/azprov-<user>` (0440, checked with `visudo -cf` when visudo exists), locks the password when
password authentication is disabled, and sets a password given on the provisioning media through
`chpasswd`'s stdin. Everything goes through `paths.root` (`--root` for the shadow tools) and argv lists.

It never logs, records or passes on argv a password; it never touches an existing account's password
unless the media carries one and the account has none usable yet.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from typing import NamedTuple

from statemachine import command, fs
from statemachine.context import Context
from statemachine.errors import ConfigureError, RecoverableError
from statemachine.log import fields
from statemachine.text import clean
from states.configure import Change, Facts

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # whole name: fullmatch ("azureuser\n" is refused)
# Accounts a platform-supplied name must never take over: the usual system and admin-group names.
RESERVED = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
    "backup", "list", "irc", "gnats", "nobody", "nogroup", "adm", "admin", "sudo", "wheel", "operator",
    "halt", "shutdown", "ftp", "sshd", "messagebus", "syslog", "polkitd", "_apt", "systemd-network",
    "systemd-resolve", "systemd-timesync", "tss", "uuidd", "tcpdump", "dnsmasq", "chrony", "azprov",
})
UID_RANGE = (1000, 60000)  # login.defs' defaults for UID_MIN..UID_MAX
NO_LOGIN_SHELLS = ("nologin", "false")  # basenames of shells that mark a service account
MAX_DATABASE = 16 << 20  # passwd, group, shadow: a few KiB on any image
# What useradd, usermod and chpasswd rewrite (inside the root they chroot into): each must be a plain file
# with one link, or the tools' backup copy ("passwd-", opened for writing) would write through it.
ACCOUNT_FILES = tuple(f"etc/{name}{suffix}" for name in ("passwd", "group", "shadow", "gshadow")
                      for suffix in ("", "-", "+", ".lock")) + ("etc/.pwd.lock", "etc/login.defs")
MAX_PASSWORD = 72  # crypt(3) implementations silently truncate (bcrypt at 72 bytes); refuse instead
SUDO_GROUPS = ("sudo", "wheel")


class Account(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str
    shell: str


# ---- pure helpers ------------------------------------------------------------------------------------

def validate_name(name: str) -> str | None:
    """Why `name` cannot be the admin account, or None."""
    if not NAME.fullmatch(name):
        return "not 1-32 of lower-case letters, digits, '_' or '-', starting with a letter or '_'"
    if name in RESERVED:
        return "a reserved system account name"
    return None


def parse_passwd(text: str, name: str) -> Account | None:
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[0] == name:
            try:
                return Account(name, int(parts[2]), int(parts[3]), parts[5], parts[6])
            except ValueError:
                return None
    return None


def parse_groups(text: str) -> dict[str, tuple[int, frozenset[str]]]:
    """group name -> (gid, members)."""
    groups: dict[str, tuple[int, frozenset[str]]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit():
            groups[parts[0]] = (int(parts[2]), frozenset(m for m in parts[3].split(",") if m))
    return groups


def resolve_groups(wanted: Sequence[str], existing: Sequence[str]) -> tuple[list[str], list[str]]:
    """(groups to use, configured groups that exist in neither form). sudo/wheel stand in for each other."""
    use, missing = [], []
    for group in wanted:
        if group not in existing and group in SUDO_GROUPS:
            group = next((g for g in SUDO_GROUPS if g in existing), group)
        if group in existing:
            if group not in use:
                use.append(group)
        else:
            missing.append(group)
    return use, missing


def uid_range(login_defs: str) -> tuple[int, int]:
    """UID_MIN..UID_MAX of an image's login.defs; the defaults where the file or a key is missing."""
    found = dict(zip(("UID_MIN", "UID_MAX"), UID_RANGE))
    for line in login_defs.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in found and parts[1].isdigit() and len(parts[1]) <= 10:
            found[parts[0]] = int(parts[1])
    return found["UID_MIN"], found["UID_MAX"]


def reuse_problem(account: Account, uids: tuple[int, int]) -> str | None:
    """Why an existing account must not become the admin, or None for a regular login account."""
    if not uids[0] <= account.uid <= uids[1]:
        return f"uid {account.uid} is outside UID_MIN..UID_MAX ({uids[0]}..{uids[1]})"
    if account.shell.rsplit("/", 1)[-1] in NO_LOGIN_SHELLS:
        return f"its shell {account.shell!r} allows no login"
    return None


def shadow_field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 2 and parts[0] == name:
            return parts[1]
    return None


def sudoers_line(name: str, passwordless: bool) -> str:
    # Without a password the admin could never answer sudo's prompt: NOPASSWD, as the platform agents do.
    return f"{name} ALL=(ALL) NOPASSWD:ALL\n" if passwordless else f"{name} ALL=(ALL) ALL\n"


def check_password(password: str) -> str | None:
    if len(password) > MAX_PASSWORD:
        return f"longer than {MAX_PASSWORD} characters"
    if any(c in password for c in "\n\r\0"):
        return "contains a line break or NUL"
    return None


def admin_name(facts: Facts) -> tuple[str, str] | None:
    if facts.instance.admin_username:
        return facts.instance.admin_username, "IMDS osProfile.adminUsername"
    if facts.media is not None and facts.media.username:
        return facts.media.username, "provisioning media UserName"
    return None


def password_disabled(facts: Facts) -> bool:
    if facts.instance.disable_password_authentication is not None:
        return facts.instance.disable_password_authentication
    return facts.media is not None and facts.media.disable_ssh_password_auth is True


# ---- reading the root ----------------------------------------------------------------------------------

def _read(ctx: Context, path: str) -> str:
    try:
        found = fs.read_file(ctx.root, path.lstrip("/"), MAX_DATABASE)
    except OSError as e:
        raise ConfigureError("account database is unreadable", path=path, error=e.strerror) from e
    return "" if found is None else found.data.decode("utf-8", errors="replace")


def guard_account_files(ctx: Context) -> None:
    """Refuse to run the shadow tools over a planted link, FIFO or hard link in the root's etc."""
    for rel in ACCOUNT_FILES:
        fs.check_plain(ctx.root, rel)


def lookup(ctx: Context, name: str) -> Account | None:
    return parse_passwd(_read(ctx, "/etc/passwd"), name)


class Plan(NamedTuple):
    name: str
    source: str
    account: Account | None
    add_groups: tuple[str, ...]
    missing_groups: tuple[str, ...]
    sudoers: str | None  # the drop-in's content when it must be (re)written
    lock: bool
    set_password: bool
    password_problem: str | None

    def actions(self) -> list[str]:
        acts = [] if self.account else ["create"]
        if self.add_groups:
            acts.append("groups +" + ",".join(self.add_groups))
        if self.sudoers is not None:
            acts.append("sudoers drop-in")
        if self.lock:
            acts.append("lock password")
        if self.set_password:
            acts.append("set password from provisioning media")
        return acts


def make_plan(ctx: Context, facts: Facts) -> Plan:
    found = admin_name(facts)
    if found is None:
        raise RecoverableError("no admin username in the instance metadata or the provisioning media")
    name, source = found
    problem = validate_name(name)
    if problem:
        raise ConfigureError("admin username is not acceptable", username=clean(name, 40), problem=problem)
    account = lookup(ctx, name)
    if account is not None:
        refused = reuse_problem(account, uid_range(_read(ctx, "/etc/login.defs")))
        if refused:
            raise ConfigureError("admin username is a system account, not a regular login account",
                                 username=name, uid=account.uid, rule=refused)
    groups = parse_groups(_read(ctx, "/etc/group"))
    use, missing = resolve_groups(ctx.config.user.groups, list(groups))
    member_of = {g for g, (gid, members) in groups.items()
                 if account and (name in members or gid == account.gid)}
    disabled = password_disabled(facts)
    password = facts.media.password if facts.media is not None else None
    password_problem = check_password(password) if password and not disabled else None
    shadow = shadow_field(_read(ctx, "/etc/shadow"), name) if account else None
    usable = bool(shadow) and shadow is not None and shadow[0] not in "!*"
    sudoers = None
    if fs.exists(ctx.root, "etc/sudoers.d") or fs.exists(ctx.root, "etc/sudoers"):
        will_have_password = usable or bool(password and not disabled and password_problem is None)
        wanted = sudoers_line(name, passwordless=disabled or not will_have_password)
        try:
            dropin = fs.read_file(ctx.root, f"etc/sudoers.d/azprov-{name}", 1 << 16)
            current = dropin.data.decode("utf-8", "replace") if dropin else None
        except (OSError, fs.Refused):
            current = None  # rewritten: the rename replaces whatever name is there
        sudoers = None if current == wanted else wanted
    return Plan(name, source, account, tuple(g for g in use if g not in member_of), tuple(missing), sudoers,
                lock=disabled and account is not None and not (shadow or "!").startswith("!"),
                set_password=bool(password) and not disabled and not usable and password_problem is None,
                password_problem=password_problem)


def plan(ctx: Context, facts: Facts) -> Change | None:
    return _change(make_plan(ctx, facts))


def _change(p: Plan) -> Change | None:
    acts = p.actions()
    if not acts:
        return None
    return Change("user", f"{p.name} {'present' if p.account else 'absent'}", f"{p.name}: {', '.join(acts)}",
                  p.source)


# ---- changing the root ---------------------------------------------------------------------------------

def _root_args(ctx: Context) -> list[str]:
    return [] if ctx.config.paths.root == "/" else ["--root", str(ctx.root)]


def _run(argv: list[str], what: str, stdin: bytes | None = None) -> None:
    command.run(argv, what, stdin=stdin)


def _visudo(path: str) -> None:
    if shutil.which("visudo"):
        _run(["visudo", "-cf", path], "visudo check of the sudoers drop-in")


def _write_sudoers(ctx: Context, name: str, content: str) -> None:
    # The temp file's name has a dot, which sudo's includedir skips: a leftover is never read.
    try:
        fs.atomic_write(ctx.root, f"etc/sudoers.d/azprov-{name}", content.encode(), 0o440, dir_mode=0o750,
                        check=_visudo)
    except OSError as e:
        raise ConfigureError("sudoers drop-in cannot be written", error=e.strerror) from e


def apply(ctx: Context, facts: Facts) -> Change | None:
    p = make_plan(ctx, facts)
    change = _change(p)
    root = _root_args(ctx)
    if p.account is None or p.add_groups or p.set_password or p.lock:
        guard_account_files(ctx)
    if p.account is None:
        shell = ["--shell", "/bin/bash"] if ctx.root_path("/bin/bash").exists() else []
        groups = ["--groups", ",".join(p.add_groups)] if p.add_groups else []
        _run(["useradd", *root, "--create-home", *shell, *groups, "--", p.name], "useradd")
    elif p.add_groups:
        _run(["usermod", *root, "--append", "--groups", ",".join(p.add_groups), "--", p.name], "usermod")
    if p.set_password and facts.media is not None:
        password = facts.media.password
        crypt = ["--crypt-method", "SHA512"] if root else []  # no PAM inside a relocated root
        _run(["chpasswd", *root, *crypt], "chpasswd", stdin=f"{p.name}:{password}\n".encode())
    if p.lock:
        _run(["usermod", *root, "--lock", "--", p.name], "usermod --lock")
    if p.sudoers is not None:
        _write_sudoers(ctx, p.name, p.sudoers)
    if change is not None:
        log.info("admin user configured", extra=fields(user=p.name, actions=change.after, source=p.source))
    if p.password_problem:
        raise RecoverableError("password from the provisioning media refused", problem=p.password_problem)
    if p.missing_groups:
        raise RecoverableError("configured groups do not exist", groups=",".join(p.missing_groups))
    return change
