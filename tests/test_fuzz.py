"""Hypothesis fuzzing of every parser azprov has: each returns a value or raises our own error type.

Goal state and health XML (mutations of real documents, not only random bytes), the IMDS document, the
hostname validator, the state record (and everything that reads a record: resume planning, --status), the
config (TOML text and parsed layers), Retry-After, and the ProvisioningFailed description. A bare
lxml/json/tomllib/KeyError/TypeError escaping any of them is a bug.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, examples
from fakefabric import GOAL_STATE
from healthparse import parse_health
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine import config, persistence, retry, status
from statemachine.errors import AgentError, ConfigError, GoalStateError, MetadataError, StateFileError
from statemachine.health import MAX_DESCRIPTION, HealthReport, failure_description, render_health
from statemachine.machine import Phase
from statemachine.resume import plan_start, with_transition
from states.configure import Facts, hostname
from states.configuring import Instance, parse_instance
from states.goalstate import GoalState, parse_goal_state

FUZZ = settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_GS = GOAL_STATE.format(incarnation="3", container_id="c-1", instance_id="i-1").encode()
VALID_HEALTH = render_health(HealthReport("3", "c-1", "i-1", "Ready"))

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


# ---- XML: mutations of valid documents ---------------------------------------------------------------------

HOSTILE_PREFIXES = [
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]>',
    b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b'<?xml version="1.0" encoding="utf-16"?>',
    b'<?xml version="1.0" encoding="bogus-8"?>', b"<!-- c -->", b"<?pi x?>", b"",
]


def mutate(doc: bytes, data: st.DataObject) -> bytes:
    choice = data.draw(st.integers(0, 5))
    if choice == 0:  # flip/insert/delete bytes
        pos = data.draw(st.integers(0, len(doc)))
        junk = data.draw(st.binary(max_size=8))
        cut = data.draw(st.integers(0, 8))
        return doc[:pos] + junk + doc[pos + cut:]
    if choice == 1:  # a hostile or odd prolog
        return data.draw(st.sampled_from(HOSTILE_PREFIXES)) + doc.split(b"?>", 1)[-1]
    if choice == 2:  # duplicate an element
        tag = data.draw(st.sampled_from([b"Incarnation", b"ContainerId", b"InstanceId", b"RoleInstance",
                                         b"Container", b"State", b"Health"]))
        m = re.search(rb"<" + tag + rb">.*?</" + tag + rb">", doc, re.S)
        return doc if m is None else doc[:m.end()] + m.group(0) + doc[m.end():]
    if choice == 3:  # namespace everything
        return doc.replace(b"<GoalState", b'<GoalState xmlns="urn:x"').replace(b"<Health>", b'<Health xmlns="urn:y">')
    if choice == 4:  # re-encode
        enc = data.draw(st.sampled_from(["utf-16", "utf-16-le", "latin-1", "utf-32"]))
        return doc.decode().encode(enc, "replace")
    return doc[: data.draw(st.integers(0, len(doc)))]  # truncate


@FUZZ
@given(st.data())
def test_goal_state_mutations_parse_or_raise_goal_state_error(data: st.DataObject) -> None:
    body = mutate(VALID_GS, data)
    try:
        gs = parse_goal_state(body)
    except GoalStateError as e:
        assert e.reason and "Traceback" not in e.reason
        return
    assert isinstance(gs, GoalState) and all(v == v.strip() and v for v in (gs.incarnation, gs.container_id,
                                                                                  gs.instance_id))


@FUZZ
@given(st.data())
def test_health_mutations_parse_or_raise_goal_state_error(data: st.DataObject) -> None:
    try:
        report = parse_health(mutate(VALID_HEALTH, data))
    except GoalStateError:
        return
    assert isinstance(report, HealthReport)


def test_xml_hostile_prefixes_never_resolve_anything(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    xxe = (f'<!DOCTYPE g [<!ENTITY x SYSTEM "file://{secret}">]>'.encode()
           + VALID_GS.split(b"?>", 1)[1].replace(b">3<", b">&x;<"))
    with pytest.raises(GoalStateError) as info:
        parse_goal_state(xxe)
    assert "TOPSECRET" not in str(info.value)


# ---- IMDS --------------------------------------------------------------------------------------------------

@FUZZ
@given(compute=st.dictionaries(st.sampled_from(["vmId", "name", "osProfile", "publicKeys", "location"]),
                               json_value, max_size=5),
       profile=st.dictionaries(st.sampled_from(["computerName", "adminUsername",
                                                "disablePasswordAuthentication"]), json_value, max_size=3),
       nest=st.booleans())
def test_imds_documents_parse_or_raise_metadata_error(compute: dict[str, Any], profile: dict[str, Any],
                                                      nest: bool) -> None:
    if nest:
        compute = {**compute, "osProfile": profile}
    try:
        instance = parse_instance(json.dumps({"compute": compute}).encode())
    except MetadataError:
        return
    assert isinstance(instance, Instance)
    assert instance.computer_name is None or isinstance(instance.computer_name, str)


@FUZZ
@given(st.binary(max_size=200) | json_value.map(lambda v: json.dumps(v).encode()))
def test_imds_arbitrary_bytes_parse_or_raise_metadata_error(body: bytes) -> None:
    try:
        parse_instance(body)
    except MetadataError:
        pass


RFC1123 = re.compile(r"^(?=.{1,63}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                     r"[A-Za-z0-9])?)*$")


@FUZZ
@given(st.text(max_size=80) | st.from_regex(RFC1123, fullmatch=True))
def test_hostname_validator_agrees_with_rfc1123(name: str) -> None:
    assert (hostname.validate(name) is None) == bool(RFC1123.match(name)), name


@FUZZ
@given(computer=st.none() | st.text(max_size=70), name=st.none() | st.text(max_size=70))
def test_hostname_choice_is_valid_or_recoverable(computer: str | None, name: str | None) -> None:
    facts = Facts(instance=Instance(computer_name=computer, name=name))
    try:
        chosen, source = hostname.choose(facts)
    except AgentError as e:
        assert e.reason == "no valid hostname in the instance metadata"
        return
    assert hostname.validate(chosen) is None and chosen in (computer, name) and source


# ---- state record: parsing and everything that reads it ----------------------------------------------------

record_keys = st.sampled_from(["schema", "state", "vm_id", "incarnation", "attempts", "boot_attempts", "history",
                               "last_error", "recoverable_errors", "steps", "reported_ready_at", "other"])
entry_value = st.dictionaries(st.sampled_from(["state", "at", "event", "duration_s", "reason", "data", "step",
                                               "status", "result", "error", "x"]), json_value, max_size=4)
record_value = st.one_of(json_value, st.lists(entry_value, max_size=3), entry_value,
                         st.dictionaries(st.text(max_size=8), entry_value, max_size=2),
                         st.sampled_from([p.value for p in Phase]))


@FUZZ
@given(doc=st.dictionaries(record_keys, record_value, max_size=8), schema=st.booleans())
def test_state_record_parses_or_raises_and_readers_never_crash(doc: dict[str, Any], schema: bool,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    if schema:
        doc["schema"] = persistence.SCHEMA
    try:
        record = persistence.from_json(doc)
    except StateFileError:
        return
    # Everything downstream of an accepted record must cope with it.
    assert persistence.from_json(json.loads(json.dumps(persistence.to_json(record)))) == record
    state_dir = tmp_path_factory.mktemp("s")
    text = status.render(record, state_dir)
    assert text.startswith("state:")
    json.dumps(status.as_json(record, state_dir))
    status.exit_code(record)
    plan_start(record, "vm", 3, "2026-01-01T00:00:00.000Z")
    with_transition(record, Phase.GOALSTATE, "network_up", "2026-01-01T00:00:01.000Z")


@FUZZ
@given(body=st.binary(max_size=300))
def test_state_record_bytes_load_or_raise(body: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("r") / "state.json"
    path.write_bytes(body)
    path.chmod(0o600)
    try:
        persistence.load(path)
    except StateFileError:
        pass


# ---- config ------------------------------------------------------------------------------------------------

sections = {name: list(getattr(config.Config(), name)._fields) for name in config.Config._fields}
toml_leaf = (st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=30)
             | st.lists(st.text(max_size=10), max_size=3) | st.lists(st.integers(), max_size=2))


@st.composite
def layers(draw: st.DrawFn) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*sections, "bogus"]), max_size=3, unique=True)):
        keys = sections.get(section, []) + ["bogus_key"]
        if draw(st.integers(0, 9)) == 0:
            layer[section] = draw(toml_leaf)  # a section that is not a table
            continue
        layer[section] = draw(st.dictionaries(st.sampled_from(keys), toml_leaf, max_size=4))
    return layer


@FUZZ
@given(layers())
def test_config_layers_merge_or_raise_config_error_naming_the_key(layer: dict[str, Any]) -> None:
    try:
        cfg = config.merge(config.Config(), layer, "fuzz.toml")
    except ConfigError as e:
        key = str(e.supporting_data.get("key", ""))
        assert key and (key in layer or key.split(".")[0] in layer), e
        assert e.supporting_data.get("file") == "fuzz.toml"
        return
    assert isinstance(cfg, config.Config)


@FUZZ
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_config_file_bytes_parse_or_raise_config_error(body: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("c") / "azprov.toml"
    path.write_bytes(body)
    try:
        config.load([path])
    except ConfigError:
        pass


# ---- small parsers on the failure path ---------------------------------------------------------------------

@FUZZ
@given(st.none() | st.text(max_size=30))
def test_retry_after_is_a_sane_delay_or_none(value: str | None) -> None:
    seconds = retry.parse_retry_after(value)
    assert seconds is None or seconds >= 0
    delay = retry.WIRESERVER.delay(3, seconds)
    assert 0 <= delay <= retry.MAX_RETRY_AFTER


@FUZZ
@given(reason=st.text(max_size=600), data=st.dictionaries(st.text(max_size=20), json_value, max_size=5),
       vm_id=st.none() | st.text(max_size=60))
def test_failure_description_stays_one_well_formed_line(reason: str, data: dict[str, Any], vm_id: str | None) -> None:
    text = failure_description(AgentError(reason, **data), vm_id, "2026-01-01T00:00:00.000Z")
    assert len(text) <= MAX_DESCRIPTION
    parts = text.split("|")
    assert all("=" in part for part in parts), text
    keys = [part.split("=", 1)[0] for part in parts]
    assert keys[:3] == ["result", "reason", "agent"], text
    assert keys[-3:] == ["vm_id", "timestamp", "documentation_url"], text  # the ids are never cut off
    assert "\n" not in text and "\r" not in text


# ---- the parsers the other issues added (provisioning media, JSON health, KVP, passwd/group) ----------------

OVF = (FIXTURES / "wala_ovf_env.xml").read_bytes() if (FIXTURES / "wala_ovf_env.xml").exists() else None


@FUZZ
@given(st.data())
def test_ovf_env_mutations_parse_or_raise_media_error(data: st.DataObject) -> None:
    from statemachine.errors import MediaError
    from states.media import parse_ovf_env

    body = mutate(OVF, data) if OVF is not None and data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    try:
        parse_ovf_env(body)
    except MediaError:
        pass


@FUZZ
@given(st.binary(max_size=200) | json_value.map(lambda v: json.dumps(v).encode()))
def test_json_health_parses_or_raises_goal_state_error(body: bytes) -> None:
    from healthparse import parse_provisioning_health

    try:
        parse_provisioning_health(body)
    except GoalStateError:
        pass


@FUZZ
@given(st.binary(max_size=3 * 2560 + 100))
def test_kvp_pool_bytes_always_decode(data: bytes) -> None:
    from statemachine import kvp

    for record in kvp.decode_pool(data):
        assert isinstance(record.key, str) and isinstance(record.value, str)


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=6))
def test_report_fields_round_trip(items: list[tuple[str, str]]) -> None:
    from statemachine import health as report
    from statemachine.text import representable

    decoded = report.decode_fields(report.encode_fields(items))
    assert len(decoded) == len(items)
    for (_, sent), (_, got) in zip(items, decoded):
        # Representable values come back exactly (control characters included: they travel %XX-escaped);
        # a lone surrogate or a noncharacter comes back as U+FFFD, never raises.
        assert got == sent or (representable(sent) != sent and representable(got) == got)


@FUZZ
@given(text=st.text(max_size=300), name=st.text(max_size=10))
def test_passwd_and_group_parsers_never_raise(text: str, name: str) -> None:
    from states.configure import user

    account = user.parse_passwd(text, name)
    assert account is None or account.name == name
    user.parse_groups(text)
