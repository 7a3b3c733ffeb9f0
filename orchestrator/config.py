"""vodflow's settings: one object, read once at start-up from ``vodflow.toml`` and ``VODFLOW_*``.

Precedence (highest first): explicit arguments, environment variables, the TOML file, defaults.
The TOML file is ``./vodflow.toml`` unless ``VODFLOW_CONFIG`` names another (which must then
exist); its keys are the setting names in lower case (``port = 8080``), and errors about a value
from it name the file and the key. No other module reads the environment.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import shutil
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as SourceError

from orchestrator.durations import parse_duration
from orchestrator.netguard import AddressPolicy, parse_allow_entry
from orchestrator.store.db import DatabaseUrlError, check_url

log = logging.getLogger("vodflow.config")
DEFAULT_TENCENT_ENDPOINT = "https://vod.api.qcloud.com/v2/index.php"


MIN_RETENTION = timedelta(days=1)
"""The shortest VODFLOW_RETENTION: handled inbox events keep the dedup keys of their callbacks."""


class SettingsError(Exception):
    """A setting has a bad value; the message names the setting and what is expected."""


class Settings(BaseSettings):
    """Everything configurable about one vodflow process. See the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="VODFLOW_",
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    data_dir: Path = Field(Path("./data"), description="Where the SQLite file and media live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file vodflow.db in the data directory."
    )
    workflows: Path = Field(Path("./workflows"), description="Directory of workflow YAML files.")
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, ge=1, le=65535, description="Port the HTTP server binds.")
    public_url: AnyHttpUrl | None = Field(
        None,
        description="URL others reach this server at (callbacks, output files); "
        "default http://HOST:PORT.",
    )

    vod_endpoint: AnyHttpUrl | None = Field(
        None,
        description="VOD v2 API URL; default: the embedded engine at PUBLIC_URL/v2/index.php. "
        f"Tencent Cloud: {DEFAULT_TENCENT_ENDPOINT}.",
    )
    vod_secret_id: SecretStr | None = Field(None, description="VOD API SecretId.")
    vod_secret_key: SecretStr | None = Field(None, description="VOD API SecretKey.")
    vod_region: str = Field("gz", min_length=1, description="VOD API Region parameter.")
    vod_signature_method: Literal["HmacSHA1", "HmacSHA256"] = Field(
        "HmacSHA256", description="How requests to VOD are signed."
    )
    vod_rate_per_minute: int = Field(
        100, ge=1, description="ProcessFileByProcedure calls allowed per minute per account."
    )
    vod_burst: int = Field(10, ge=1, description="Calls the limiter lets through back to back.")
    vod_timeout: float = Field(10.0, gt=0, description="Seconds to wait for one VOD API answer.")

    callback_token: SecretStr | None = Field(
        None, description="Secret that VOD/LVB callbacks must carry (?token= or X-Vodflow-Token)."
    )
    lvb_callback_key: SecretStr | None = Field(
        None, description="The live service's callback key, to check each body's sign."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token for the dashboard API's admin scope."
    )
    api_read_token: SecretStr | None = Field(
        None, description="Bearer token for the dashboard API's read-only scope."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks secret (whsec_...) notify steps sign with."
    )

    engine: bool = Field(True, description="Serve the embedded VOD engine in this process.")
    engine_procedures: Path | None = Field(
        None, description="Procedures file for the embedded engine; default: the built-in set."
    )
    engine_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        description="Media tasks the embedded engine runs at once.",
    )
    engine_media_dir: Path | None = Field(
        None, description="Where the embedded engine keeps files; default: DATA_DIR/vod."
    )
    engine_shared_media: bool = Field(
        False,
        description="Every engine on this database sees the same media directory (a shared "
        "volume), so several may run; otherwise the first engine claims the database and "
        "another refuses to start.",
    )
    engine_app_id: int = Field(
        1250000001,
        ge=1,
        description="The account's AppId the engine reports, as in <appid>-procedurev2-... IDs.",
    )
    engine_callback_url: str | None = Field(
        None,
        description="Where the engine POSTs its VOD 4.0 events; default: this server's receiver "
        "(PUBLIC_URL/callbacks/vod?token=...), or none with RELIABLE_CALLBACKS or when the "
        "engine serves alone (`vodflow engine serve`); empty: none (events are only pulled with "
        "PullEvent).",
    )
    engine_answer_shape: Literal["tasks", "procedure", "both"] = Field(
        "tasks",
        description="Task IDs ProcessFileByProcedure answers: the seed's transcodeTaskId, "
        "imageSpriteTaskId, ... ('tasks'), one vodTaskId ('procedure'), or both.",
    )
    engine_rate_per_minute: int = Field(
        100, ge=1, description="ProcessFileByProcedure calls the engine allows per minute per key."
    )
    engine_extra_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="SecretId -> SecretKey pairs the engine accepts besides vodflow's own.",
    )
    engine_timestamp_window: float = Field(
        300.0,
        gt=0,
        description="Seconds a request's Timestamp may differ from the engine's clock; a Nonce "
        "cannot be reused within it.",
    )
    engine_pull_wait: float = Field(
        5.0, ge=0, description="Seconds PullEvent holds a request while no event waits."
    )
    engine_event_visibility: float = Field(
        30.0, gt=0, description="Seconds before a pulled but unconfirmed event is pulled again."
    )
    engine_callback_backoff: float = Field(
        2.0, gt=0, description="Seconds before the first resend of a failed callback (doubling)."
    )
    engine_callback_backoff_max: float = Field(
        600.0, gt=0, description="Longest wait between resends of a failed callback."
    )
    engine_task_lease: float = Field(
        60.0,
        ge=3,
        description="Seconds a task stays claimed without a heartbeat; then another worker "
        "re-runs it (a crashed process's tasks).",
    )
    engine_upload_max_bytes: int = Field(
        8 * 1024**3, ge=1024, description="Largest file the engine's upload endpoint accepts."
    )
    ffmpeg: Path | None = Field(
        None, description="FFmpeg binary; default: the one from the imageio-ffmpeg package."
    )
    reliable_callbacks: bool = Field(
        False, description="Pull events with PullEvent instead of receiving pushed callbacks."
    )

    verify_allow_hosts: str = Field(
        "",
        description="Comma-separated hosts, host:port pairs, addresses or CIDR ranges on the "
        "local network that output checks may fetch (an internal CDN origin); this vodflow's "
        "own URL and its VOD endpoint are always allowed.",
    )

    sweep_interval: float = Field(
        5.0, gt=0, description="Seconds between sweeps (timers, stalled tasks, leases)."
    )
    outbox_lease: float = Field(
        120.0,
        gt=0,
        description="Seconds a command in progress may go without its owner renewing its lease "
        "(done every third of this) before another process (or this one, restarted) takes it "
        "over and looks for its result.",
    )
    retention: str = Field(
        "30d",
        description="How long handled inbox events, done outbox commands and spent timers are "
        "kept (runs and their history are kept; see run_retention).",
    )
    run_retention: str | None = Field(
        None,
        description="How long a finished run (succeeded, failed or cancelled) is kept, with its "
        "steps, tasks and history, counted from its last change; unset keeps every run. At "
        "least VODFLOW_RETENTION.",
    )
    task_poll_after: str = Field(
        "10m", description="Default wait for a task's callback before asking VOD about it."
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body accepted (callbacks, the API, the engine's API, the "
        "webhook sink; uploads have their own limit).",
    )
    events_max_streams: int = Field(
        100,
        ge=1,
        description="Live-update streams (/api/events) open at once; more are answered 503.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"

    @field_validator("verify_allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: str) -> str:
        for entry in _entries(value):
            parse_allow_entry(entry)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value:
            try:
                check_url(value)
            except DatabaseUrlError as exc:
                raise ValueError(str(exc).removeprefix("VODFLOW_DATABASE_URL: ")) from None
        return value

    @field_validator("ffmpeg")
    @classmethod
    def _ffmpeg(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.X_OK)):
            found = shutil.which(str(value))
            if found is None:
                raise ValueError(
                    "not an executable file nor a command on PATH; expected the path of an "
                    "FFmpeg binary, or unset for the one vodflow installs"
                )
            return Path(found)
        return value

    @field_validator("task_poll_after", "retention")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("run_retention", mode="before")
    @classmethod
    def _run_retention(cls, value: object, info: ValidationInfo) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # set but empty: keep every run, as unset
        if isinstance(value, str):
            kept = parse_duration(value)
            retention = info.data.get("retention")
            if isinstance(retention, str) and kept < parse_duration(retention):
                raise ValueError(
                    f"expected at least VODFLOW_RETENTION ({retention}): a run is how a late "
                    "copy of its trigger is known as one, for as long as callbacks are kept"
                )
        return value

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        if parse_duration(value) < MIN_RETENTION:
            raise ValueError(
                "expected at least 1d: a handled callback is how a copy VOD sends again is "
                "known as one, and VOD resends for hours"
            )
        return value

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if (self.vod_secret_id is None) != (self.vod_secret_key is None):
            raise ValueError(
                "VODFLOW_VOD_SECRET_ID and VODFLOW_VOD_SECRET_KEY must be set together"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        _, values = read_config_file()
        return (init_settings, env_settings, InitSettingsSource(settings_cls, values))

    # Derived values: computed, never configured twice.

    @property
    def base_url(self) -> str:
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'vodflow.db').as_posix()}"

    @property
    def vod_url(self) -> str:
        if self.vod_endpoint is not None:
            return str(self.vod_endpoint)
        return f"{self.base_url}/v2/index.php"

    @property
    def uses_embedded_engine(self) -> bool:
        """Whether the VOD vodflow calls is its own embedded engine: the engine is served here
        and the VOD endpoint is this vodflow's ``/v2/index.php`` (the default). Otherwise VOD
        is elsewhere: Tencent Cloud, or an engine serving alone with its own procedures."""
        if not self.engine:
            return False
        # This vodflow answers at its public URL, and at the address it listens on.
        listening = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        if ":" in listening:
            listening = f"[{listening}]"
        own = {
            f"{base}/v2/index.php" for base in (self.base_url, f"http://{listening}:{self.port}")
        }
        called = endpoint_key(self.vod_url)
        return any(endpoint_key(url) == called for url in own)

    @property
    def verify_policy(self) -> AddressPolicy:
        """What output checks may fetch: public addresses, this vodflow's own host:port and
        its VOD endpoint's (a self-hosted engine serves outputs where it answers), and
        VERIFY_ALLOW_HOSTS."""
        return AddressPolicy.build([self.base_url, self.vod_url], _entries(self.verify_allow_hosts))

    @property
    def task_poll_after_seconds(self) -> float:
        return parse_duration(self.task_poll_after).total_seconds()

    @property
    def retention_seconds(self) -> float:
        return parse_duration(self.retention).total_seconds()

    @property
    def run_retention_seconds(self) -> float | None:
        if self.run_retention is None:
            return None
        return parse_duration(self.run_retention).total_seconds()


def endpoint_key(url: str) -> tuple[str, str, int | None, str]:
    """What identifies the server and path a URL reaches: (scheme, host, port, path) with every
    loopback name and address (``localhost``, ``127.0.0.1``, ``[::1]``, ...) as one host, the
    scheme's default port written out, and the path without repeated or trailing slashes."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    path = re.sub("/+", "/", parts.path).rstrip("/")
    return scheme, "loopback" if _is_loopback(host) else host, port, path


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True  # RFC 6761: names under localhost are the loopback
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def read_config_file() -> tuple[Path, dict[str, Any]]:
    """The TOML file's path and its settings: none when ``./vodflow.toml`` does not exist, a
    SettingsError naming the file when ``VODFLOW_CONFIG`` names one that does not, or when it
    cannot be read or parsed."""
    named = os.environ.get("VODFLOW_CONFIG")
    path = Path(named or "vodflow.toml")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if named:
            raise SettingsError(
                f"VODFLOW_CONFIG: {path}: no such file (expected a TOML settings file)"
            ) from None
        return path, {}
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the settings file: {exc.strerror}") from None
    try:
        return path, tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte {exc.start}): expected TOML") from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's error has the position only in its message: "... (at line 3, column 7)"
        text = str(exc)
        at = re.search(r" \(at line (\d+), column (\d+)\)$", text)
        where = f"{path}:{at[1]}:{at[2]}" if at else str(path)
        reason = text[: at.start()] if at else text
        raise SettingsError(f"{where}: not valid TOML: {reason}") from None


def _from_file(key: str, overrides: dict[str, Any], file: dict[str, Any]) -> bool:
    """Whether the file gave the value of setting ``key`` (arguments and the environment win)."""
    env = "vodflow_" + key.lower()
    return (
        key in file and key not in overrides and not any(name.lower() == env for name in os.environ)
    )


def _problem(err: Any, overrides: dict[str, Any], path: Path, file: dict[str, Any]) -> str:
    loc = err["loc"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg.replace("Input should be ", "expected ", 1)
    got = err.get("input")
    key = str(loc[0]) if loc else ""
    # A secret's value is not repeated where it was wrong (start-up errors reach logs).
    shown = "" if isinstance(got, dict) or key in SECRET_SETTINGS else f" (got {got!r})"
    if not loc:
        return f"settings: {msg}{shown}"
    if not _from_file(key, overrides, file):
        return f"VODFLOW_{key.upper()}: {msg}{shown}"
    name = ".".join(str(part) for part in loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, Settings.model_fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{path}: {name}: unknown setting{hint}"
    return f"{path}: {name}: {msg}{shown}"


SECRET_SETTINGS = frozenset(
    {name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    | {"database_url"}  # its password
)
"""Settings whose values are never shown in an error."""


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning pydantic's report into one message per bad setting, each
    named where it was given: ``VODFLOW_PORT`` for the environment, ``vodflow.toml: port`` for
    the file."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        path, file = read_config_file()
        lines = [_problem(err, overrides, path, file) for err in exc.errors()]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except SourceError as exc:
        # A structured setting (a JSON object in the environment) that is not JSON at all.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"VODFLOW_{field.group(1).upper()}" if field else "a setting"
        raise SettingsError(
            f"invalid configuration:\n  {name}: not valid JSON; expected a JSON object such as "
            '{"AKID...": "the SecretKey"}'
        ) from None
    _warn_of_near_misses()
    return settings


_warned: set[str] = set()


def _warn_of_near_misses() -> None:
    """A VODFLOW_ variable that is no setting but nearly one (``VODFLOW_PROT``) is ignored,
    as the environment's other variables are: said once, with the name it was likely meant to
    be. (A file's unknown key is an error: the file holds settings only.)"""
    known = [f"VODFLOW_{name.upper()}" for name in Settings.model_fields]
    for name in os.environ:
        if not name.startswith("VODFLOW_") or name in known or name in _warned:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            _warned.add(name)
            log.warning("%s is not a setting and is ignored; did you mean %s?", name, close[0])


def _entries(value: str) -> list[str]:
    """The entries of a comma-separated setting, blanks left out."""
    return [entry for entry in value.split(",") if entry.strip()]
