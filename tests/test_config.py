"""Settings: defaults, environment, the TOML file, and errors that name the setting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.config import SettingsError, load_settings
from orchestrator.store.db import sync_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("VODFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def refused() -> str:
    """What loading the settings is refused with."""
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


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


def test_the_vod_is_the_embedded_engine_only_when_served_here_and_called_here() -> None:
    own = "https://vodflow.example.com/v2/index.php"
    public = "https://vodflow.example.com"
    assert load_settings(public_url=public, vod_endpoint=own).uses_embedded_engine
    # Nothing here answers at /v2/index.php: an engine serving alone has its own procedures.
    assert not load_settings(engine=False).uses_embedded_engine
    elsewhere = "https://engine.example.com/v2/index.php"
    assert not load_settings(public_url=public, vod_endpoint=elsewhere).uses_embedded_engine


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://localhost:8080/v2/index.php",
        "http://[::1]:8080/v2/index.php",
        "http://127.0.0.2:8080/v2/index.php",
        "http://LocalHost.:8080/v2/index.php",
        "http://[::ffff:127.0.0.1]:8080/v2/index.php",
        "http://127.0.0.1:8080/v2/index.php/",
        "http://127.0.0.1:8080//v2//index.php",
    ],
)
def test_this_vodflow_is_recognised_under_any_loopback_name(endpoint: str) -> None:
    assert load_settings(vod_endpoint=endpoint).uses_embedded_engine


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://vodflow.example.com:443/v2/index.php",
        "https://VODFLOW.example.com/v2/index.php/",
        "https://vodflow.example.com./v2/index.php",
        # the address it listens on, from the same machine
        "http://localhost:8080/v2/index.php",
    ],
)
def test_this_vodflow_is_recognised_at_its_public_url_default_port_and_listening_address(
    endpoint: str,
) -> None:
    settings = load_settings(
        host="0.0.0.0", public_url="https://vodflow.example.com/", vod_endpoint=endpoint
    )
    assert settings.uses_embedded_engine


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://localhost:8081/v2/index.php",  # another port
        "https://localhost:8080/v2/index.php",  # another scheme
        "http://localhost:8080/v3/index.php",  # another path
        "http://localhost/v2/index.php",  # port 80
        "http://10.0.0.7:8080/v2/index.php",  # another machine
    ],
)
def test_another_vod_is_not_taken_for_the_embedded_engine(endpoint: str) -> None:
    assert not load_settings(vod_endpoint=endpoint).uses_embedded_engine


def test_bad_values_name_the_setting_and_the_expectation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODFLOW_PORT", "eighty")
    monkeypatch.setenv("VODFLOW_VOD_SIGNATURE_METHOD", "MD5")
    monkeypatch.setenv("VODFLOW_TASK_POLL_AFTER", "soon")
    text = refused()
    assert "VODFLOW_PORT: expected a valid integer" in text
    assert "(got 'eighty')" in text
    assert "VODFLOW_VOD_SIGNATURE_METHOD: expected 'HmacSHA1' or 'HmacSHA256'" in text
    assert "VODFLOW_TASK_POLL_AFTER: " in text


def test_a_database_url_vodflow_cannot_use_is_refused_with_the_two_it_can(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for url, words in [
        ("mysql://x/y", "unsupported database 'mysql'; expected sqlite or postgresql"),
        ("notaurl", "'notaurl' is not a database URL; expected sqlite:///"),
        # Two slashes: "data" read as a host, and no file.
        ("sqlite://data/vodflow.db", "'sqlite://data/vodflow.db' names no SQLite file; expected"),
        # A URL that does not parse keeps its password out (start-up errors reach logs), with
        # a / or an @ in it, or as a parameter.
        ("postgresql://u:S3cret@db:54x/v", "'postgresql://u:***@db:54x/v' is not a database URL"),
        ("postgresql://u:S3/cret@db:5x/v", "'postgresql://u:***@db:5x/v' is not a database URL"),
        ("postgresql://u:S3@cret@db:5x/v", "'postgresql://u:***@db:5x/v' is not a database URL"),
        ("postgresql://db:5x/v?password=S3cret", "'postgresql://db:5x/v?password=***' is not"),
        ("postgresql://u:S3//cret@db:5x/v", "'postgresql://u:***@db:5x/v' is not a database URL"),
        # Typed without "://": what precedes the @ is masked from the first ":".
        ("postgresql//u:S3cret@db/v", "'postgresql//u:***@db/v' is not a database URL"),
        ("postgresql:/u:S3cret@db/v", "'postgresql:***@db/v' is not a database URL"),
    ]:
        monkeypatch.setenv("VODFLOW_DATABASE_URL", url)
        said = refused()
        assert f"VODFLOW_DATABASE_URL: {words}" in said
        assert "S3cret" not in said
    # libpq's and most hosts' spelling of a PostgreSQL URL.
    monkeypatch.setenv("VODFLOW_DATABASE_URL", "postgres://vodflow@db.example:5432/vodflow")
    assert sync_url(load_settings().sqlalchemy_url).drivername == "postgresql+psycopg"


def test_a_misspelled_variable_is_named_with_the_setting_it_was_likely_meant_to_be(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VODFLOW_PROT", "9000")
    monkeypatch.setenv("VODFLOW_SOMETHING_ELSE", "1")  # no setting is near it: not ours to judge
    assert load_settings().port == 8080
    assert [r.getMessage() for r in caplog.records if r.name == "vodflow.config"] == [
        "VODFLOW_PROT is not a setting and is ignored; did you mean VODFLOW_PORT?"
    ]


def test_a_secrets_bad_value_is_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vodflow.toml").write_text(
        'callback_token = 918273645546372819\napi_token = ["tokA_SECRET"]\nport = "x"\n'
    )
    monkeypatch.setenv("VODFLOW_CONFIG", str(tmp_path / "vodflow.toml"))
    text = refused()
    assert "callback_token: expected a valid string\n" in text
    assert "918273645546372819" not in text
    assert "tokA_SECRET" not in text
    assert "port: expected a valid integer, unable to parse string as an integer (got 'x')" in text


def test_a_json_setting_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODFLOW_ENGINE_EXTRA_KEYS", "{AKIDx: key")
    said = refused()
    assert "VODFLOW_ENGINE_EXTRA_KEYS: not valid JSON; expected a JSON object" in said
    assert "AKIDx" not in said


def test_ffmpeg_must_be_an_executable_or_a_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VODFLOW_FFMPEG", str(tmp_path / "nope"))
    said = refused()
    assert "VODFLOW_FFMPEG: not an executable file nor a command on PATH" in said
    monkeypatch.setenv("VODFLOW_FFMPEG", "sh")  # a command on PATH is found there
    assert load_settings().ffmpeg == Path(shutil.which("sh") or "")


def test_retention_keeps_a_day_of_callbacks_at_least(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handled callbacks are how a resent one is known as a copy: a retention of minutes
    would apply VOD's resends again."""
    monkeypatch.setenv("VODFLOW_RETENTION", "10m")
    said = refused()
    assert "VODFLOW_RETENTION: expected at least 1d: " in said
    monkeypatch.setenv("VODFLOW_RETENTION", "1d")
    assert load_settings().retention_seconds == 86400


def test_run_retention_is_off_unless_set_and_keeps_runs_as_long_as_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().run_retention_seconds is None  # every run kept
    monkeypatch.setenv("VODFLOW_RUN_RETENTION", "")
    assert load_settings().run_retention_seconds is None
    monkeypatch.setenv("VODFLOW_RUN_RETENTION", "90d")
    assert load_settings().run_retention_seconds == 90 * 86400
    monkeypatch.setenv("VODFLOW_RUN_RETENTION", "7d")
    said = refused()
    assert "VODFLOW_RUN_RETENTION: expected at least VODFLOW_RETENTION (30d): " in said
    monkeypatch.setenv("VODFLOW_RETENTION", "7d")
    assert load_settings().run_retention_seconds == 7 * 86400
    monkeypatch.setenv("VODFLOW_RUN_RETENTION", "soon")
    said = refused()
    assert "VODFLOW_RUN_RETENTION: " in said


def test_secret_pair_must_be_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODFLOW_VOD_SECRET_ID", "AKIDx")
    with pytest.raises(SettingsError, match="must be set together"):
        load_settings()


def test_unknown_toml_key_is_named_as_the_files_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "vodflow.toml").write_text("prot = 1\n")
    said = refused()
    assert "vodflow.toml: prot: unknown setting; did you mean 'port'?" in said
    assert "VODFLOW_PROT" not in said


def test_bad_values_from_the_file_name_the_file_and_key_unless_the_environment_gave_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "my.toml").write_text('port = "eighty"\nvod_region = ""\nvod_burst = 0\n')
    monkeypatch.setenv("VODFLOW_CONFIG", "my.toml")
    monkeypatch.setenv("VODFLOW_VOD_BURST", "-1")
    text = refused()
    assert "my.toml: port: expected a valid integer" in text
    assert "(got 'eighty')" in text
    assert "my.toml: vod_region: String should have at least 1 character (got '')" in text
    assert "VODFLOW_VOD_BURST: expected greater than or equal to 1 (got '-1')" in text


def test_a_config_file_that_was_named_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().port == 8080  # ./vodflow.toml is optional
    monkeypatch.setenv("VODFLOW_CONFIG", "missing.toml")
    said = refused()
    assert said == ("VODFLOW_CONFIG: missing.toml: no such file (expected a TOML settings file)")


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "vodflow.toml").write_text("port = 8080\nhost = \n")
    said = refused()
    assert said == "vodflow.toml:2:8: not valid TOML: Invalid value"


def test_what_output_checks_may_fetch_on_the_local_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ipaddress

    policy = load_settings().verify_policy
    assert policy.trusts("127.0.0.1", 8080)  # the embedded engine's outputs
    assert not policy.trusts("127.0.0.1", 5432)
    monkeypatch.setenv("VODFLOW_VERIFY_ALLOW_HOSTS", "cdn-origin.internal, 10.8.0.0/16,db:5432")
    monkeypatch.setenv("VODFLOW_VOD_ENDPOINT", "http://engine.internal:9000/v2/index.php")
    policy = load_settings(public_url="https://vodflow.example.com").verify_policy
    assert policy.trusts("vodflow.example.com", 443)
    assert policy.trusts("engine.internal", 9000)  # a self-hosted engine serves its outputs
    assert policy.trusts("CDN-origin.internal", 81)
    assert policy.trusts("db", 5432)
    assert not policy.trusts("db", 5433)
    assert policy.allows_address(ipaddress.ip_address("10.8.3.4"))
    assert not policy.allows_address(ipaddress.ip_address("10.9.3.4"))
    monkeypatch.setenv("VODFLOW_VERIFY_ALLOW_HOSTS", "10.0.0.0/8, http://x/")
    said = refused()
    assert "VODFLOW_VERIFY_ALLOW_HOSTS: 'http://x/' is not a host name, host:port, address or " in (
        said
    )
