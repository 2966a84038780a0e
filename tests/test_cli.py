"""The p2a-connector command line and the shipped example configuration."""

import shutil
from pathlib import Path

from p2a_connector import cli, config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_example_configuration_is_valid(tmp_path):
    shutil.copy(ROOT / "etc" / "connector.toml", tmp_path)
    (tmp_path / "acme.password").write_text("secret\n")

    loaded = config.load(tmp_path / "connector.toml")

    assert [b.name for b in loaded.operators[0].binds] == ["acme-primary", "acme-1"]
    assert loaded.operators[0].binds[0].password == "secret"


def test_check_config_prints_a_summary_and_exits_0(tmp_path, capsys):
    shutil.copy(ROOT / "etc" / "connector.toml", tmp_path)
    (tmp_path / "acme.password").write_text("secret\n")

    status = cli.main(["check-config", str(tmp_path / "connector.toml")])

    assert status == 0
    out = capsys.readouterr().out
    assert "bind acme-primary: receiver p2a@smsc1.acme.example:2775" in out
    assert out.rstrip().endswith("configuration OK")


def test_check_config_names_the_key_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[spool]\nbackend = 'postgres'\n")

    status = cli.main(["check-config", str(path)])

    assert status == 2
    assert "spool.backend: 'postgres' is not one of sqlite" in capsys.readouterr().err
