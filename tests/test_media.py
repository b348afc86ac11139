"""The provisioning media: ovf-env.xml parsing over every fixture, and finding/mounting the CD."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, examples
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine.errors import MediaError
from states import media

OVF_FIXTURES = sorted(FIXTURES.glob("*ovf_env*"))

# What each fixture must give: a MediaError reason fragment for the invalid ones, else (hostname, username).
EXPECTED: dict[str, str | tuple[str, str]] = {
    "azureinit_ovf_env.xml": ("myhostname", "myusername"),
    "cloudinit_ovf_env_full.xml": ("test-host", "test-user"),
    "cloudinit_ovf_env_minimal.xml": ("test-host", "test-user"),
    "cloudinit_ovf_env_preprovisioned_running.xml": ("test-host", "test-user"),
    "cloudinit_ovf_env_invalid_duplicate_hostname.xml": "duplicate element",
    "cloudinit_ovf_env_invalid_duplicate_provisioning_section.xml": "duplicate element",
    "cloudinit_ovf_env_missing_hostname.xml": "lacks a required element",
    "cloudinit_ovf_env_non_azure.xml": "no Azure ProvisioningSection",
    "wala_ovf_env.xml": ("HostName", "UserName"),
    "wala_ovf_env_provision_guest_agent_bad_value.xml": ("HostName", "UserName"),
    "wala_ovf_env_provision_guest_agent_empty.xml": ("HostName", "UserName"),
    "wala_ovf_env_provision_guest_agent_true.xml": ("HostName", "UserName"),
}


def test_every_fixture_has_an_expectation() -> None:
    assert OVF_FIXTURES, f"no *ovf_env* fixtures under {FIXTURES}"
    assert {p.name for p in OVF_FIXTURES} == set(EXPECTED)


@pytest.mark.parametrize("path", OVF_FIXTURES, ids=lambda p: p.name)
def test_fixture(path: Path) -> None:
    expected = EXPECTED[path.name]
    if isinstance(expected, str):
        with pytest.raises(MediaError) as info:
            media.parse_ovf_env(path.read_bytes())
        assert expected in info.value.reason
    else:
        env = media.parse_ovf_env(path.read_bytes())
        assert (env.hostname, env.username) == expected


def test_duplicate_fixtures_name_the_duplicated_element() -> None:
    for name, element in (("cloudinit_ovf_env_invalid_duplicate_hostname.xml", "HostName"),
                          ("cloudinit_ovf_env_invalid_duplicate_provisioning_section.xml", "ProvisioningSection")):
        with pytest.raises(MediaError) as info:
            media.parse_ovf_env((FIXTURES / name).read_bytes())
        assert info.value.supporting_data["element"] == element


def test_full_fixture_fields() -> None:
    env = media.parse_ovf_env((FIXTURES / "cloudinit_ovf_env_full.xml").read_bytes())
    assert env.password == "test-password"
    assert env.custom_data == b"foo"
    assert env.disable_ssh_password_auth is True
    assert env.public_keys == (media.MediaKey("fp1", "path1", ""), media.MediaKey("fp2", "path2", "somevalue"))
    assert env.notes == ()


def test_wala_fixture_keys_and_raw_custom_data() -> None:
    env = media.parse_ovf_env((FIXTURES / "wala_ovf_env.xml").read_bytes())
    assert env.disable_ssh_password_auth is False
    assert env.public_keys == (media.MediaKey("EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62",
                                              "$HOME/UserName/.ssh/authorized_keys",
                                              "ssh-rsa AAAANOTAREALKEY== foo@bar.local"),)
    # "CustomData" is not base64: kept as given, with a note for the record.
    assert env.custom_data == b"CustomData" and env.notes


def test_empty_password_and_missing_optional_fields() -> None:
    env = media.parse_ovf_env((FIXTURES / "azureinit_ovf_env.xml").read_bytes())
    assert env.password is None and env.custom_data is None and env.public_keys == ()
    assert env.disable_ssh_password_auth is False
    minimal = media.parse_ovf_env((FIXTURES / "cloudinit_ovf_env_minimal.xml").read_bytes())
    assert minimal.disable_ssh_password_auth is None


def test_password_never_in_repr() -> None:
    env = media.parse_ovf_env((FIXTURES / "wala_ovf_env.xml").read_bytes())
    assert env.password == "UserPassword"
    assert "UserPassword" not in repr(env) and "b'CustomData'" not in repr(env)


def _doc(inner: str, wa_prefix: str = "wa") -> bytes:
    return textwrap.dedent(f"""\
        <Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
                     xmlns:{wa_prefix}="http://schemas.microsoft.com/windowsazure">
          <{wa_prefix}:ProvisioningSection>
            <{wa_prefix}:LinuxProvisioningConfigurationSet>{inner}</{wa_prefix}:LinuxProvisioningConfigurationSet>
          </{wa_prefix}:ProvisioningSection>
        </Environment>""").replace("WA:", f"{wa_prefix}:").encode()


def test_any_prefix_works() -> None:
    inner = "<WA:HostName>h1</WA:HostName><WA:UserName>u1</WA:UserName>"
    for prefix in ("wa", "ns1", "zz"):
        assert media.parse_ovf_env(_doc(inner, prefix)).hostname == "h1"


def test_wrong_namespace_is_not_read() -> None:
    body = _doc('<HostName xmlns="urn:other">h1</HostName><wa:UserName>u1</wa:UserName>')
    with pytest.raises(MediaError) as info:
        media.parse_ovf_env(body)
    assert info.value.supporting_data["element"] == "HostName"


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"<Environment", "not well-formed"),
    (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><Environment>&e;</Environment>', "DOCTYPE"),
    (b"<Other xmlns='http://schemas.dmtf.org/ovf/environment/1'/>", "not an OVF Environment"),
    (b"x" * (media.MAX_FILE + 1), "too large"),
])
def test_invalid_documents(body: bytes, reason: str) -> None:
    with pytest.raises(MediaError) as info:
        media.parse_ovf_env(body)
    assert reason in info.value.reason


def test_bad_boolean_is_rejected() -> None:
    inner = ("<wa:HostName>h</wa:HostName><wa:UserName>u</wa:UserName>"
             "<wa:DisableSshPasswordAuthentication>yes</wa:DisableSshPasswordAuthentication>")
    with pytest.raises(MediaError, match="true"):
        media.parse_ovf_env(_doc(inner))


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_raise_only_media_error(body: bytes) -> None:
    try:
        media.parse_ovf_env(body)
    except MediaError:
        pass


# ---- finding / mounting ---------------------------------------------------------------------------------

def test_find_mount_decodes_escapes() -> None:
    table = ("/dev/sda1 / ext4 rw 0 0\n"
             "/dev/sr0 /mnt/my\\040cd udf ro 0 0\n")
    assert media.find_mount(table, "/dev/sr0") == "/mnt/my cd"
    assert media.find_mount(table, "/dev/sr1") is None


def test_no_device_means_no_media(tmp_path: Path) -> None:
    assert media.read_ovf_env(str(tmp_path / "sr0"), run=_never) is None


def test_directory_is_read_directly(tmp_path: Path) -> None:
    (tmp_path / "ovf-env.xml").write_bytes(b"<x/>")
    assert media.read_ovf_env(str(tmp_path), run=_never) == b"<x/>"


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ovf-env.xml").symlink_to("/etc/passwd")
    with pytest.raises(MediaError, match="unreadable"):
        media.read_ovf_env(str(tmp_path), run=_never)


def _never(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    raise AssertionError(f"unexpected command {argv}")


def test_already_mounted_media_is_read_in_place(tmp_path: Path) -> None:
    device = tmp_path / "sr0"
    device.write_bytes(b"")
    where = tmp_path / "mnt dir"
    where.mkdir()
    (where / "ovf-env.xml").write_bytes(b"<mounted/>")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"{device} {str(where).replace(' ', chr(92) + '040')} udf ro 0 0\n")
    assert media.read_ovf_env(str(device), mounts_file=mounts, run=_never) == b"<mounted/>"


def test_mount_tries_udf_then_iso9660_and_unmounts(tmp_path: Path) -> None:
    device = tmp_path / "sr0"
    device.write_bytes(b"")
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        if argv[0] == "mount" and "udf" in argv:
            return subprocess.CompletedProcess(argv, 32, b"", b"wrong fs type")
        if argv[0] == "mount":
            Path(argv[-1], "ovf-env.xml").write_bytes(b"<cd/>")  # what the kernel would show
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        Path(argv[-1], "ovf-env.xml").unlink()
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    empty = tmp_path / "mounts"
    empty.write_text("")
    assert media.read_ovf_env(str(device), mounts_file=empty, run=run) == b"<cd/>"
    assert [c[0] for c in calls] == ["mount", "mount", "umount"]
    assert calls[0][calls[0].index("-t") + 1] == "udf" and calls[1][calls[1].index("-t") + 1] == "iso9660"
    assert "ro,nosuid,nodev,noexec" in calls[0]
    target = Path(calls[2][-1])
    assert not target.exists()  # the private mount point is gone


def test_mount_failure_names_every_type(tmp_path: Path) -> None:
    device = tmp_path / "sr0"
    device.write_bytes(b"")
    empty = tmp_path / "mounts"
    empty.write_text("")

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 32, b"", b"nope")

    with pytest.raises(MediaError) as info:
        media.read_ovf_env(str(device), mounts_file=empty, run=run)
    assert "udf" in info.value.supporting_data["tried"] and "iso9660" in info.value.supporting_data["tried"]


# ---- the real mount, in a private mount namespace -------------------------------------------------------

def _kernel_filesystems() -> set[str]:
    try:
        return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def _namespace_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "mounting needs root (run in a VM or container as root)"
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "unshare(1)/mount(8) not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return "cannot create a private mount namespace here: " + probe.stderr.decode(errors="replace")[:100]
    return None


_IN_NAMESPACE = """
import sys
from states import media
print(media.read_ovf_env(sys.argv[1], fstypes=tuple(sys.argv[2].split(","))).decode())
"""


def _read_in_namespace(image: Path, fstypes: str) -> str:
    scratch = image.parent / "tmp"  # where the private mount point is made: must be empty afterwards
    scratch.mkdir()
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", _IN_NAMESPACE,
                          str(image), fstypes], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)})
    assert out.returncode == 0, out.stderr
    assert list(scratch.iterdir()) == []
    return out.stdout


def _media_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "cloudinit_ovf_env_full.xml", src / "ovf-env.xml")
    return src


def test_real_iso_in_private_namespace(tmp_path: Path) -> None:
    reason = _namespace_skip_reason()
    if reason:
        pytest.skip(reason)
    if not {"iso9660", "udf"} & _kernel_filesystems():
        pytest.skip("this kernel has neither iso9660 nor udf (see /proc/filesystems); "
                    "test_real_mount_fallback_in_private_namespace covers the mount path with ext2")
    tool = shutil.which("genisoimage") or shutil.which("xorrisofs") or shutil.which("mkisofs")
    if not tool:
        pytest.skip("no genisoimage/xorrisofs to build the ISO (apt-get install genisoimage)")
    image = tmp_path / "media.iso"
    subprocess.run([tool, "-quiet", "-o", str(image), "-J", "-R", "-V", "rd_rdfe_stable",
                    str(_media_dir(tmp_path))], check=True)
    text = _read_in_namespace(image, "udf,iso9660")
    assert media.parse_ovf_env(text.encode()).hostname == "test-host"


def test_real_mount_fallback_in_private_namespace(tmp_path: Path) -> None:
    """The same code path (mount -t udf fails, the next type works, umount, rmdir) with an ext2 image,
    which every kernel here has even when iso9660 is not built in."""
    reason = _namespace_skip_reason()
    if reason:
        pytest.skip(reason)
    if "ext2" not in _kernel_filesystems() or not shutil.which("mke2fs"):
        pytest.skip("no ext2 in this kernel or no mke2fs")
    image = tmp_path / "media.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(_media_dir(tmp_path)), str(image), "1M"],
                   check=True, capture_output=True)
    text = _read_in_namespace(image, "udf,ext2")
    assert media.parse_ovf_env(text.encode()).username == "test-user"
    assert str(image) not in Path("/proc/self/mounts").read_text()  # nothing leaked into our namespace


_value = st.text(st.characters(exclude_categories=["Cc", "Cs", "Cn"]), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s)


@settings(max_examples=examples(150), deadline=None)
@given(prefix=st.from_regex(r"[a-z]{1,6}", fullmatch=True), host=_value, name=_value,
       password=st.none() | _value, disable=st.none() | st.booleans(), data=st.none() | st.binary(max_size=64))
def test_built_documents_round_trip(prefix: str, host: str, name: str, password: str | None,
                                    disable: bool | None, data: bytes | None) -> None:
    from lxml import etree

    wa = f"{{{media.WA_NS}}}"
    root = etree.Element(f"{{{media.OVF_NS}}}Environment", nsmap={None: media.OVF_NS, prefix: media.WA_NS})
    config_set = etree.SubElement(etree.SubElement(root, wa + "ProvisioningSection"),
                                  wa + "LinuxProvisioningConfigurationSet")
    values = {"HostName": host, "UserName": name, "UserPassword": password,
              "DisableSshPasswordAuthentication": None if disable is None else str(disable).lower(),
              "CustomData": None if data is None else base64.b64encode(data).decode()}
    for tag, value in values.items():
        if value is not None:
            etree.SubElement(config_set, wa + tag).text = value
    env = media.parse_ovf_env(etree.tostring(root))
    assert (env.hostname, env.username, env.password, env.disable_ssh_password_auth) == (
        host, name, password, disable)
    assert env.custom_data == (data if data else None)
