from __future__ import annotations

import re
from pathlib import Path

import pytest

from statemachine import config
from statemachine.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


SHIPPED = REPO / "conf" / "azprov.toml"


def uncommented(text: str) -> str:
    """The shipped file with its commented-out settings (`#[section]`, `#key = value`) switched on."""
    return re.sub(r"^#(?=\[\w+\]$|\w+ = )", "", text, flags=re.MULTILINE)


def test_shipped_config_is_comments_only() -> None:
    # Installed as /etc/azprov/azprov.toml: a value set there would pin today's default on every image.
    assert config.load([SHIPPED]) == config.Config()
    settings = [line for line in SHIPPED.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert settings == []


def test_shipped_config_shows_the_builtin_defaults(tmp_path: Path) -> None:
    (tmp_path / "azprov.toml").write_text(uncommented(SHIPPED.read_text()))
    assert config.load([tmp_path / "azprov.toml"]) == config.Config()


def test_shipped_config_names_every_key() -> None:
    text = uncommented(SHIPPED.read_text())
    for section in config.Config._fields:
        assert f"\n[{section}]\n" in text, f"[{section}] missing from conf/azprov.toml"
        for key in getattr(config.Config(), section)._fields:
            assert f"\n{key} = " in text, f"{section}.{key} missing from conf/azprov.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_layers_apply_in_order(tmp_path: Path) -> None:
    system = tmp_path / "etc"
    (system / "azprov.toml.d").mkdir(parents=True)
    write(system / "azprov.toml", '[fabric]\nimds_timeout = 10\nnetwork_timeout = 11\n')
    write(system / "azprov.toml.d" / "20-b.toml", '[fabric]\nimds_timeout = 30\n')
    write(system / "azprov.toml.d" / "10-a.toml", '[fabric]\nimds_timeout = 20\nrequest_timeout = 5\n')
    write(system / "azprov.toml.d" / "ignored.conf", 'not toml at all [')
    explicit = write(tmp_path / "x.toml", '[fabric]\nrequest_timeout = 7\n')
    cfg = config.load_layers(explicit, system_dir=system)
    assert cfg.fabric.network_timeout == 11.0
    assert cfg.fabric.imds_timeout == 30.0  # 20-b after 10-a
    assert cfg.fabric.request_timeout == 7.0  # --config last
    assert cfg.fabric.wireserver_timeout == 1200.0  # untouched default


def test_missing_system_file_means_defaults(tmp_path: Path) -> None:
    assert config.load_layers(None, system_dir=tmp_path / "nothing") == config.Config()


@pytest.mark.parametrize("text, key", [
    ('[fabric]\nwireserver_ur = "http://x"\n', "fabric.wireserver_ur"),
    ('[fabrik]\nx = 1\n', "fabrik"),
    ('[fabric]\nnetwork_timeout = "soon"\n', "fabric.network_timeout"),
    ('[fabric]\nnetwork_timeout = true\n', "fabric.network_timeout"),
    ('[fabric]\nnetwork_timeout = -1\n', "fabric.network_timeout"),
    ('[fabric]\nwireserver_url = "127.0.0.1"\n', "fabric.wireserver_url"),  # an address is not a URL
    ('[hostname]\nmethod = "bash"\n', "hostname.method"),
    ('[paths]\nroot = "relative"\n', "paths.root"),
    ('[configure]\nsteps = ["hostname", "reboot"]\n', "configure.steps"),
    ('[configure]\nsteps = "hostname"\n', "configure.steps"),
    ('[agent]\nmax_boot_attempts = 1.5\n', "agent.max_boot_attempts"),
    ('fabric = 3\n', "fabric"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load([path])
    assert info.value.supporting_data["key"] == key
    assert info.value.supporting_data["file"] == str(path)
    from statemachine.cli import exit_code

    assert exit_code(info.value) == 78


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[fabric]\n\nimds_timeout = = 3\n')
    with pytest.raises(ConfigError) as info:
        config.load([path])
    assert "line 3" in info.value.supporting_data["error"]


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load([tmp_path / "absent.toml"])
    with pytest.raises(ConfigError, match="unreadable"):
        config.load([tmp_path])  # a directory
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[log]\nlevel = "\xe9"\n')
    with pytest.raises(ConfigError):
        config.load([bad])


def test_ints_are_accepted_for_seconds() -> None:
    cfg = config.merge(config.Config(), {"fabric": {"network_timeout": 5}}, "t")
    assert cfg.fabric.network_timeout == 5.0 and isinstance(cfg.fabric.network_timeout, float)


def test_total_budget_covers_every_phase() -> None:
    assert config.Config().total_budget() == 300 + 2 * 1200 + 300
