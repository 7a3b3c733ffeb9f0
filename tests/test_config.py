"""Settings: defaults, environment, the TOML file, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("VODFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.sqlalchemy_url == "sqlite:///data/vodflow.db"
    assert s.vod_url == "http://127.0.0.1:8080/v2/index.php"
    assert s.uses_embedded_engine
    assert s.workflows == Path("workflows")
    assert s.task_poll_after_seconds == 600


def test_environment_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "vodflow.toml").write_text('port = 9000\nvod_region = "sh"\n')
    monkeypatch.setenv("VODFLOW_PORT", "9100")
    monkeypatch.setenv("VODFLOW_VOD_ENDPOINT", "https://vod.api.qcloud.com/v2/index.php")
    s = load_settings()
    assert s.port == 9100
    assert s.vod_region == "sh"
    assert s.vod_url == "https://vod.api.qcloud.com/v2/index.php"
    assert not s.uses_embedded_engine


def test_bad_values_name_the_setting_and_the_expectation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODFLOW_PORT", "eighty")
    monkeypatch.setenv("VODFLOW_VOD_SIGNATURE_METHOD", "MD5")
    monkeypatch.setenv("VODFLOW_TASK_POLL_AFTER", "soon")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "VODFLOW_PORT: expected a valid integer" in text
    assert "(got 'eighty')" in text
    assert "VODFLOW_VOD_SIGNATURE_METHOD: expected 'HmacSHA1' or 'HmacSHA256'" in text
    assert "VODFLOW_TASK_POLL_AFTER: " in text


def test_secret_pair_must_be_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODFLOW_VOD_SECRET_ID", "AKIDx")
    with pytest.raises(SettingsError, match="must be set together"):
        load_settings()


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "vodflow.toml").write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="VODFLOW_PROT"):
        load_settings()
