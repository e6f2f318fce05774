"""Analysis history in SQL (SQLite by default, PostgreSQL by URL) via SQLAlchemy, with the
uploaded images on disk or in S3."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dermalab.core.atomic import atomic_write_bytes


class Base(DeclarativeBase):
    """Declarative base."""


class Analysis(Base):
    """One analysed photo."""

    __tablename__ = "analyses"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    verdict: Mapped[str] = mapped_column(String(16))
    referral: Mapped[str | None] = mapped_column(String(16), nullable=True)
    image_ref: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(Integer)
    result_json: Mapped[str] = mapped_column(Text)


class ImageStore:
    """Uploaded images on a local folder or under an ``s3://bucket/prefix``."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.s3 = location.startswith("s3://")
        if self.s3:
            from dermalab.data.s3 import S3Uri, make_client

            self.uri = S3Uri.parse(location)
            self.client = make_client()
        else:
            self.root = Path(location)
            self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> str:
        """Store bytes; returns the reference kept in the database."""
        if self.s3:
            self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key(key), Body=data)
            return f"{self.uri}/{key}"
        path = self.root / key
        atomic_write_bytes(path, data)
        return str(path)

    def delete(self, ref: str) -> None:
        """Remove a stored image (missing is fine)."""
        if self.s3:
            key = ref[len(str(self.uri)) + 1:]
            self.client.delete_object(Bucket=self.uri.bucket, Key=self.uri.key(key))
        else:
            Path(ref).unlink(missing_ok=True)


class HistoryStore:
    """Thread-safe history: one session per call; writes serialised for SQLite."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, pool_pre_ping=True, **kwargs)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write = threading.Lock()

    def add(self, row: Analysis) -> None:
        """Insert one analysis."""
        with self._write, Session(self.engine) as s, s.begin():
            s.add(row)

    def get(self, analysis_id: str) -> Analysis | None:
        """One analysis or ``None``."""
        with self.sessions() as s:
            return s.get(Analysis, analysis_id)

    def page(self, limit: int, offset: int) -> tuple[list[Analysis], int]:
        """Newest first, and the total count."""
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(Analysis)) or 0
            rows = s.scalars(select(Analysis).order_by(Analysis.created_at.desc(), Analysis.id)
                             .limit(limit).offset(offset)).all()
            return list(rows), int(total)

    def delete(self, analysis_id: str) -> Analysis | None:
        """Delete and return the row (``None`` if absent)."""
        with self._write, Session(self.engine) as s, s.begin():
            row = s.get(Analysis, analysis_id)
            if row is not None:
                s.delete(row)
            return row


def now() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)
