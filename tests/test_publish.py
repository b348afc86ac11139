"""The `publish` step: which manager, which exact command, and what happens when it cannot.

Nothing here reaches this machine's network manager: the running system is a temporary tree (its /proc,
/sys and /run files written by the test), and the managers' commands are fake executables in a temporary
directory that is the whole PATH; each logs its argv and answers as the test scripts it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine.config import Config, ConfigureConfig, HostnameConfig, PathsConfig, merge
from statemachine.context import Context
from statemachine.errors import ConfigError, RecoverableError
from states.configure import Facts, publish, registry
from states.configuring import Instance

ROUTES = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
          "eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
          "eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n")
DHCLIENT = ("/sbin/dhclient", "-4", "-v", "-i", "-pf", "/run/dhclient.eth0.pid", "-lf",
            "/var/lib/dhcp/dhclient.eth0.leases", "-I", "-df", "/var/lib/dhcp/dhclient6.eth0.leases", "eth0")


class System:
    """A fake running system: a tree standing for / and a PATH of fake manager commands."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp / "sys"
        self.bin = tmp / "bin"
        self.log = tmp / "calls.log"
        self.bin.mkdir()
        monkeypatch.setenv("PATH", str(self.bin))  # only the fakes can ever run
        self.write("proc/net/route", ROUTES)
        self.write("sys/class/net/eth0/ifindex", "2\n")
        self.kills: list[tuple[int, int]] = []

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def fake(self, name: str, exit_code: int = 0, output: str = "", sleep: float = 0.0) -> None:
        script = self.bin / name
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> {self.log}\n"
                          f"{'/bin/sleep ' + str(sleep) if sleep else ''}\n"
                          f"printf '%s' '{output}'\nexit {exit_code}\n")
        script.chmod(0o755)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def publish(self, name: str = "web-01") -> publish.Link:
        return publish.publish(name, sysroot=self.root, kill=lambda pid, sig: self.kills.append((pid, sig)))

    def networkd(self) -> None:
        self.write("run/systemd/netif/links/2", "ADMIN_STATE=configured\nOPER_STATE=routable\n"
                   "NETWORK_FILE=/etc/systemd/network/80-dhcp.network\n")

    def dhclient(self, argv: tuple[str, ...] = DHCLIENT, pid: int = 4242) -> None:
        self.write("run/dhclient.eth0.pid", f"{pid}\n")
        self.write(f"proc/{pid}/cmdline", "\0".join(argv) + "\0")


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> System:
    return System(tmp_path, monkeypatch)


# ---- pure parts -------------------------------------------------------------------------------------------

def live(steps: tuple[str, ...] = ("hostname",), publish_on: bool = True, root: str = "/") -> Config:
    return Config(configure=ConfigureConfig(steps=steps), hostname=HostnameConfig(publish=publish_on),
                  paths=PathsConfig(root=root))


def test_publish_runs_right_after_hostname() -> None:
    assert publish.ordered(live(), {}) == ("hostname", "publish")
    assert publish.ordered(live(("hostname", "user", "ssh_keys")), {}) == ("hostname", "publish", "user", "ssh_keys")
    assert publish.ordered(live(("user", "hostname")), {}) == ("user", "hostname", "publish")


@pytest.mark.parametrize("config", [live(publish_on=False), live(("user", "ssh_keys")), live(root="/mnt/image")])
def test_no_publish_step_when_off_without_hostname_or_on_a_relocated_root(config: Config) -> None:
    assert "publish" not in publish.ordered(config, {})


def test_no_publish_when_the_name_was_already_in_place_or_invalid() -> None:
    assert publish.ordered(live(), {"hostname": {"status": "unchanged"}}) == ("hostname",)
    assert publish.ordered(live(), {"hostname": {"status": "recoverable_error"}}) == ("hostname",)
    assert publish.ordered(live(), {"hostname": {"status": "done"}}) == ("hostname", "publish")
    # A run that already recorded a publish attempt keeps the step in its list (resume after a crash).
    done = {"hostname": {"status": "unchanged"}, "publish": {"status": "done"}}
    assert publish.ordered(live(), done) == ("hostname", "publish")


def test_publish_is_a_registered_step() -> None:
    assert "publish" in registry() and registry()["publish"] is publish


def test_interface_towards_the_wireserver() -> None:
    assert publish.route_interface(ROUTES) == "eth0"  # through the default route
    # No default route, only an on-link /7 holding the WireServer's address (the boot test's slirp network).
    on_link = ROUTES.splitlines()[0] + "\nens2\t000000A8\t00000000\t0001\t0\t0\t1024\t000000FE\t0\t0\t0\n"
    assert publish.route_interface(on_link) == "ens2"
    # The most specific route wins over the default; then the lowest metric.
    host = "eth1\t10813FA8\t00000000\t0005\t0\t0\t500\tFFFFFFFF\t0\t0\t0\n"
    assert publish.route_interface(ROUTES + host) == "eth1"
    second_default = "eth2\t00000000\t0100A8C0\t0003\t0\t0\t50\t00000000\t0\t0\t0\n"
    assert publish.route_interface(ROUTES + second_default) == "eth2"
    assert publish.route_interface(ROUTES, "10.1.2.3") == "eth0"
    assert publish.route_interface(ROUTES.splitlines()[0]) is None and publish.route_interface("") is None


def test_wireserver_address_from_config() -> None:
    assert publish.wireserver_address(Config()) == "168.63.129.16"
    fab = Config().fabric._replace(wireserver_url="http://127.0.0.1:8080")
    assert publish.wireserver_address(Config(fabric=fab)) == "127.0.0.1"
    fab = Config().fabric._replace(wireserver_url="http://wireserver.example")
    assert publish.wireserver_address(Config(fabric=fab)) == "168.63.129.16"


@given(st.text())
def test_route_table_parser_never_raises(text: str) -> None:
    result = publish.route_interface(text)
    assert result is None or result in text


def test_manager_state_files() -> None:
    assert publish.networkd_manages("ADMIN_STATE=configured\nNETWORK_FILE=/etc/systemd/network/a.network\n")
    assert not publish.networkd_manages("ADMIN_STATE=unmanaged\nNETWORK_FILE=\n")
    assert not publish.networkd_manages("garbage")
    assert publish.nm_manages("[device]\nmanaged = true\n")
    assert not publish.nm_manages("[device]\nmanaged=false\n")


def test_dhclient_command_line_must_be_a_daemon_for_this_interface() -> None:
    assert publish.usable_dhclient(DHCLIENT, "eth0")
    assert not publish.usable_dhclient(DHCLIENT, "eth1")
    assert not publish.usable_dhclient(("/sbin/dhclient", "-r", "eth0"), "eth0")
    assert not publish.usable_dhclient(("/usr/bin/sleep", "eth0"), "eth0")
    assert not publish.usable_dhclient((), "eth0")


def test_config_key_is_a_bool() -> None:
    assert Config().hostname.publish is True
    assert merge(Config(), {"hostname": {"publish": False}}, "t.toml").hostname.publish is False
    with pytest.raises(ConfigError) as info:
        merge(Config(), {"hostname": {"publish": "yes"}}, "t.toml")
    assert info.value.supporting_data["key"] == "hostname.publish"


# ---- each manager: the exact command ------------------------------------------------------------------------

def test_networkd_reconfigures_the_link(system: System) -> None:
    system.networkd()
    system.fake("networkctl")
    link = system.publish()
    assert (link.iface, link.manager) == ("eth0", "networkd")
    assert system.calls() == ["networkctl reconfigure eth0"]  # never `renew`: it resends the old name


def test_networkd_without_dbus_is_recoverable_and_says_so(system: System) -> None:
    system.networkd()
    system.fake("networkctl", exit_code=1, output="Failed to connect to bus: No such file or directory")
    with pytest.raises(RecoverableError) as info:
        system.publish()
    data = info.value.supporting_data
    assert data["manager"] == "networkd" and data["exit"] == 1 and "connect to bus" in data["output"]
    assert "next boot" in data["dbus"]


def test_networkmanager_reapplies_the_dhcp_hostname(system: System) -> None:
    system.write("run/NetworkManager/devices/2", "[device]\nmanaged=true\n")
    system.write("run/dbus/system_bus_socket", "")
    system.fake("nmcli")
    assert system.publish("db-7").manager == "networkmanager"
    assert system.calls() == ["nmcli --wait 15 device modify eth0 ipv4.dhcp-hostname db-7"]


def test_dhclient_is_replaced_by_the_same_command_under_systemd(system: System) -> None:
    system.dhclient()
    system.write("run/systemd/private", "")
    system.fake("systemd-run")
    assert system.publish().manager == "dhclient"
    assert system.kills == [(4242, signal.SIGKILL)]
    assert system.calls() == [
        "systemd-run --unit=azprov-dhclient-eth0 --collect --service-type=forking --description=DHCP client "
        "for eth0 (restarted by azprov to publish the hostname) -- " + " ".join(DHCLIENT)]


def test_dhclient_is_left_alone_when_systemd_cannot_restart_it(system: System) -> None:
    system.dhclient()
    system.fake("systemd-run")
    with pytest.raises(RecoverableError, match="systemd is not reachable"):
        system.publish()
    assert system.kills == [] and system.calls() == []


def test_a_hanging_command_is_cut_at_its_timeout(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "COMMAND_TIMEOUT", 0.3)
    system.networkd()
    system.fake("networkctl", sleep=5)
    with pytest.raises(RecoverableError) as info:
        system.publish()
    assert info.value.supporting_data["exit"] == 124


def test_missing_command_is_recoverable(system: System) -> None:
    system.networkd()
    with pytest.raises(RecoverableError, match="command not found"):
        system.publish()


def test_unknown_manager_and_no_route_are_recoverable(system: System) -> None:
    with pytest.raises(RecoverableError, match="no known network manager"):
        system.publish()
    system.write("proc/net/route", ROUTES.splitlines()[0] + "\n")
    with pytest.raises(RecoverableError, match="no IPv4 route to the WireServer"):
        system.publish()
    assert system.calls() == []


# ---- the step ------------------------------------------------------------------------------------------------

def test_step_never_touches_the_network_with_a_relocated_root(system: System, tmp_path: Path) -> None:
    system.networkd()
    system.fake("networkctl")
    ctx = Context(Config(paths=PathsConfig(state_dir=str(tmp_path / "state"), root=str(tmp_path / "image"))))
    facts = Facts(Instance(computer_name="web-01"))
    assert publish.apply(ctx, facts) is None and publish.plan(ctx, facts) is None
    assert system.calls() == []


def test_step_result_names_the_manager(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_publish(name: str, destination: str) -> publish.Link:
        assert destination == "168.63.129.16"
        seen.append(name)
        return publish.Link("eth0", "networkd")

    monkeypatch.setattr(publish, "publish", fake_publish)
    ctx = Context(Config())
    change = publish.apply(ctx, Facts(Instance(computer_name="web-01")))
    assert seen == ["web-01"]
    assert change is not None and change.after == "web-01" and "networkd" in change.why
    assert publish.apply(Context(live(publish_on=False)), Facts(Instance(computer_name="web-01"))) is None
