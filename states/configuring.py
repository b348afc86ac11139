"""CONFIGURING: read the instance metadata and run the configured steps, one per runner turn.

The IMDS instance document is parsed into the few fields provisioning uses (pure; raises MetadataError).
`compute.osProfile.computerName` is the guest hostname; `compute.name` is the Azure resource name (on scale
sets something like `vmss_1`, not a valid hostname), kept only as a fallback.

Each turn runs the next step not yet finished and returns its status as progress (no event), so the
runner persists it before the next step starts: a crash after "user" resumes at "ssh_keys". When every
step is finished the phase ends with `configured`. The IMDS document (and, with `[media] enabled`, the
provisioning media's ovf-env.xml) is read once per run and kept in memory only: the media can carry a
password, which the record never holds. The media's CustomData is saved to `<state_dir>/custom_data`
(0600, never executed); an unusable media is a recoverable error, since IMDS carries the same facts.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, NamedTuple

from statemachine import fs
from statemachine.context import Context, Outcome
from statemachine.errors import (
    AgentError,
    ConfigureError,
    MediaError,
    MetadataError,
    RecoverableError,
    UnreadableMetadataError,
)
from statemachine.failpoints import failpoint
from statemachine.log import fields
from statemachine.persistence import Record
from statemachine.text import clean, decode_json, parse_bool, utc_now
from states.configure import Facts, registry
from states.configure.publish import ordered

if TYPE_CHECKING:  # states.media is imported only when [media] is enabled
    from states.media import OvfEnv

log = logging.getLogger(__name__)

FINISHED = ("done", "unchanged", "recoverable_error")
CUSTOM_DATA = "custom_data"
MAX_DOCUMENT = 4 << 20  # bytes of IMDS instance document


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


def facts(ctx: Context) -> Facts:
    """The IMDS document (and the media), read once per run."""
    if ctx.run.facts is None:
        instance = parse_instance(ctx.metadata().get_instance())
        env, ctx.run.media_problem = read_media(ctx)
        ctx.run.facts = Facts(instance=instance, media=env)
    return ctx.run.facts


def read_media(ctx: Context) -> tuple[OvfEnv | None, MediaError | None]:
    """The provisioning media's settings when `[media] enabled`; a broken media is not fatal: IMDS has
    the same facts on every current VM, so it is recorded as a recoverable error and ignored."""
    cfg = ctx.config.media
    if not cfg.enabled:
        return None, None
    from states import media
    try:
        raw = media.read_ovf_env(cfg.device, cfg.path)
        if raw is None:
            log.info("no provisioning media", extra=fields(device=cfg.device))
            return None, None
        env = media.parse_ovf_env(raw)
    except MediaError as e:
        log.warning("provisioning media unusable; ignoring it", extra=fields(reason=str(e)))
        return None, e
    for note in env.notes:
        log.warning("provisioning media: " + note)
    return env, None


def save_custom_data(ctx: Context, env: OvfEnv | None) -> bool:
    """CustomData goes to <state_dir>/custom_data, 0600, as given (never executed, never logged)."""
    if env is None or env.custom_data is None:
        return False
    state_dir = ctx.config.state_dir
    path = state_dir / CUSTOM_DATA
    try:
        try:
            found = fs.read_file(state_dir, CUSTOM_DATA, len(env.custom_data), owner=os.geteuid())
        except fs.Refused:
            found = None  # not ours as it stands (a link, too large): replaced below
        if found is not None and found.data == env.custom_data:
            return False
        fs.atomic_write(state_dir, CUSTOM_DATA, env.custom_data, 0o600, dir_mode=0o700)
    except OSError as e:
        raise ConfigureError("CustomData cannot be saved", path=str(path), error=e.strerror) from e
    log.info("CustomData saved", extra=fields(path=str(path), size=len(env.custom_data)))
    return True


def _media_updates(ctx: Context, record: Record, found: Facts) -> dict[str, Any]:
    """Once per run: save CustomData, and record a broken media once (not on every resumed run)."""
    if ctx.run.media_handled:
        return {}
    ctx.run.media_handled = True
    save_custom_data(ctx, found.media)
    problem = ctx.run.media_problem
    if problem is None or any(e.get("step") == "media" for e in record.recoverable_errors):
        return {}
    return {"recoverable_errors": (*record.recoverable_errors, {"step": "media", **problem.as_dict()})}


def identity_updates(record: Record, found: Facts) -> dict[str, Any]:
    """Without SMBIOS the VM id comes from IMDS once the network is up (the runner logs the fallback)."""
    if record.vm_id is None and found.instance.vm_id:
        return {"vm_id": found.instance.vm_id.lower(), "vm_id_source": "imds"}
    return {}


def step(ctx: Context, record: Record) -> Outcome:
    found = facts(ctx)
    updates = identity_updates(record, found)
    updates.update(_media_updates(ctx, record, found))
    record = record._replace(**updates)
    steps = registry()
    pending = [n for n in ordered(ctx.config, record.steps) if record.steps.get(n, {}).get("status") not in FINISHED]
    for name in pending[:1]:
        started = ctx.clock()
        entry: dict[str, Any] = {"at": utc_now()}
        failpoint(f"configure.{name}.before")
        try:
            change = steps[name].apply(ctx, found)
        except RecoverableError as e:
            log.warning("configure step could not finish", extra=fields(step=name, reason=str(e)))
            entry.update(status="recoverable_error", error=e.as_dict())
            updates["recoverable_errors"] = (*record.recoverable_errors, {"step": name, **e.as_dict()})
        except AgentError as e:
            e.supporting_data.setdefault("step", name)  # so last_error and --status name the step
            raise
        else:
            entry.update(status="done" if change else "unchanged",
                         result=change.describe() if change else "already as required")
        failpoint(f"configure.{name}.after")
        entry["duration_s"] = round(ctx.clock() - started, 3)
        updates["steps"] = {**record.steps, name: entry}
        # The last step's result is saved with the transition to DONE: one durable write (two fsyncs)
        # fewer, and a crash before it only repeats that idempotent step.
        return Outcome("configured" if len(pending) == 1 else None, updates)
    return Outcome("configured", updates)
