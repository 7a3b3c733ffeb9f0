"""Alembic environment: runs vodflow's migrations on SQLite or PostgreSQL (sync drivers)."""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from orchestrator.store.db import configure_sqlite, ensure_sqlite_dir, sync_url
from orchestrator.store.tables import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
    "sqlalchemy.url"
)
if not url:
    raise SystemExit("no database URL: pass -x url=... or use `vodflow db upgrade`")


def run_migrations_offline() -> None:
    context.configure(
        url=str(sync_url(url)),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    ensure_sqlite_dir(url)
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=engine.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
