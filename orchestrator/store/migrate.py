"""Running the Alembic migrations from vodflow itself (`vodflow db upgrade`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    ini = ROOT / "alembic.ini"
    if not ini.exists():
        raise FileNotFoundError(
            f"{ini} not found: vodflow's migrations live in the source checkout's alembic/ folder"
        )
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> None:
    command.current(alembic_config(url), verbose=False)
