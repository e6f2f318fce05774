"""Alembic migrations of the service's database, run in-process at start-up.

``0001`` is the history table as the first version wrote it (no accounts); a database that has
that table but no ``alembic_version`` is stamped ``0001`` first, then upgraded like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text

FIRST = "0001"
#: The PostgreSQL advisory lock held while migrating (any constant unique to this app):
#: workers started together migrate one after the other, the later ones finding it done.
MIGRATION_LOCK = 0x6465726D  # "derm"


def upgrade(engine: Any, revision: str = "head") -> None:
    """Bring the database behind ``engine`` to ``revision`` (default: the newest)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # held to the end of this transaction
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "analyses" in tables and "alembic_version" not in tables:
            command.stamp(cfg, FIRST)
        command.upgrade(cfg, revision)
