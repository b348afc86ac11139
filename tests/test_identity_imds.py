from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from statemachine.errors import MetadataError
from statemachine.resume import PLACEHOLDERS, normalize, read_vm_id
from states.configuring import parse_instance


def test_gen1_uuid_is_byte_swapped_and_lower_cased() -> None:
    # SMBIOS on Gen1 shows the first three fields byte-swapped relative to IMDS vmId.
    assert normalize("D3D3F8E6-1A2B-3C4D-5E6F-0123456789AB", gen1=True) == "e6f8d3d3-2b1a-4d3c-5e6f-0123456789ab"
    assert normalize("D3D3F8E6-1A2B-3C4D-5E6F-0123456789AB\n", gen1=False) == "d3d3f8e6-1a2b-3c4d-5e6f-0123456789ab"


@given(st.uuids().filter(lambda u: str(u) not in PLACEHOLDERS))
def test_swap_is_an_involution(u: object) -> None:
    once = normalize(str(u), gen1=True)
    assert once is not None and normalize(once, gen1=True) == str(u)


@pytest.mark.parametrize("raw", ["", "not-a-uuid", "Not Settable", "\x00\x00"])
def test_junk_product_uuid_means_unknown(raw: str) -> None:
    assert normalize(raw, gen1=False) is None


def test_absent_smbios_means_unknown(tmp_path: Path) -> None:
    assert read_vm_id(tmp_path / "nope", tmp_path) is None
    (tmp_path / "u").write_text("D3D3F8E6-1A2B-3C4D-5E6F-0123456789AB")
    assert read_vm_id(tmp_path / "u", tmp_path / "efi") == "e6f8d3d3-2b1a-4d3c-5e6f-0123456789ab"  # Gen1
    assert read_vm_id(tmp_path / "u", tmp_path) == "d3d3f8e6-1a2b-3c4d-5e6f-0123456789ab"  # Gen2


def test_imds_fixtures() -> None:
    minimal = parse_instance((FIXTURES / "azureinit_imds_instance_minimal.json").read_bytes())
    assert minimal.computer_name == "AzTux-MinProvAgent-Test-0001"
    assert minimal.admin_username == "MinProvAgentUser"
    assert minimal.disable_password_authentication is True
    assert [k.key_data for k in minimal.public_keys] == ["ssh-rsa test_key1", "ssh-rsa test_key2"]
    extended = parse_instance((FIXTURES / "azureinit_imds_instance_2023-11-15_extended.json").read_bytes())
    assert extended.computer_name == "temp-vm" and extended.vm_id == "12345678-90ab-cdef-1234-567890abcdef"
    old = parse_instance((FIXTURES / "wala_imds_instance_2018-02-01.json").read_bytes())
    assert old.computer_name is None and old.name == "health"  # no osProfile in that API version
    unicode = parse_instance((FIXTURES / "wala_imds_instance_unicode.json").read_bytes())
    assert unicode.name == "héalth"


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"compute": []}', "wrong type"),
    (b'{"compute": {"osProfile": {"computerName": 5}}}', "wrong type"),
    (b'{"compute": {"publicKeys": "x"}}', "wrong type"),
    (b'{"compute": {"publicKeys": [3]}}', "wrong type"),
    (b'{"compute": {"osProfile": {"disablePasswordAuthentication": "maybe"}}}', "true"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bad_imds_documents(body: bytes, reason: str) -> None:
    with pytest.raises(MetadataError, match=reason):
        parse_instance(body)


def test_missing_os_profile_is_not_an_error() -> None:
    assert parse_instance(b'{"compute": {"name": "x"}}').computer_name is None


@given(st.uuids(), st.booleans(), st.booleans())
def test_normalize_agrees_with_the_uuid_module(u: uuid.UUID, gen1: bool, upper: bool) -> None:
    text = str(u).upper() if upper else str(u)
    expected = str(uuid.UUID(bytes_le=u.bytes)) if gen1 else str(u)
    assert normalize(text, gen1=gen1) == expected
