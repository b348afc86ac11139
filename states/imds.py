"""The IMDS instance document, parsed into the few fields provisioning uses. Pure; raises MetadataError.

`compute.osProfile.computerName` is the guest hostname; `compute.name` is the Azure resource name (on scale
sets something like `vmss_1`, not a valid hostname), kept only as a fallback.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from statemachine.errors import MetadataError, UnreadableMetadataError
from statemachine.text import clean, decode_json, parse_bool

MAX_DOCUMENT = 4 << 20


class PublicKey(NamedTuple):
    key_data: str
    path: str | None


class Instance(NamedTuple):
    vm_id: str | None = None
    computer_name: str | None = None
    name: str | None = None
    admin_username: str | None = None
    disable_password_authentication: bool | None = None
    public_keys: tuple[PublicKey, ...] = ()


def _str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetadataError("instance metadata field has the wrong type", field=f"{where}.{key}",
                            expected="string", got=type(value).__name__)
    return value


def _obj(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise MetadataError("instance metadata field has the wrong type", field=f"{where}.{key}",
                            expected="object", got=type(value).__name__)
    return value


def _bool_string(value: str | None, field: str) -> bool | None:
    try:
        return parse_bool(value)
    except ValueError:
        raise MetadataError("instance metadata field is not \"true\" or \"false\"", field=field,
                            value=clean(value or "", 32)) from None


def _keys(compute: dict[str, Any]) -> tuple[PublicKey, ...]:
    value = compute.get("publicKeys", [])
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MetadataError("instance metadata field has the wrong type", field="compute.publicKeys",
                            expected="array", got=type(value).__name__)
    keys = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise MetadataError("instance metadata field has the wrong type", field=f"compute.publicKeys[{i}]",
                                expected="object", got=type(item).__name__)
        data = _str(item, "keyData", f"compute.publicKeys[{i}]")
        if data:
            keys.append(PublicKey(data, _str(item, "path", f"compute.publicKeys[{i}]") or None))
    return tuple(keys)


def parse_instance(body: bytes) -> Instance:
    if len(body) > MAX_DOCUMENT:
        raise MetadataError("instance metadata is too large", size=len(body), limit=MAX_DOCUMENT)
    try:
        doc = decode_json(body, "utf-8-sig")
    except ValueError as e:  # every way decoding fails, NaN, 1e999 and 5000-digit numbers included
        raise UnreadableMetadataError("instance metadata is not valid JSON", error=clean(str(e), 200)) from e
    if not isinstance(doc, dict):
        raise MetadataError("instance metadata is not a JSON object", got=type(doc).__name__)
    compute = _obj(doc, "compute", "")
    profile = _obj(compute, "osProfile", "compute")
    return Instance(
        vm_id=_str(compute, "vmId", "compute"),
        computer_name=_str(profile, "computerName", "compute.osProfile"),
        name=_str(compute, "name", "compute"),
        admin_username=_str(profile, "adminUsername", "compute.osProfile"),
        disable_password_authentication=_bool_string(
            _str(profile, "disablePasswordAuthentication", "compute.osProfile"),
            "compute.osProfile.disablePasswordAuthentication"),
        public_keys=_keys(compute),
    )
