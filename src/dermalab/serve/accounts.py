"""Accounts and sessions: sign-up and sign-in with an Argon2-hashed password, anonymous
devices, session tokens, and what "delete my account" removes.

A session token is 256 random bits (``secrets.token_urlsafe``); the database keeps only its
SHA-256, so reading the database grants no session. Argon2id (argon2-cffi's defaults, RFC 9106)
runs only at sign-up and sign-in, never per request: a request costs one indexed lookup.
An anonymous device is a user with no email; signing up or in from it moves its analyses to
the account.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dermalab.core.i18n import DEFAULT_LANGUAGE, t
from dermalab.serve.store import AuthToken, User, now

SESSION_DAYS = 30
MIN_PASSWORD = 8
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class AccountError(Exception):
    """A sign-up or sign-in that cannot be done; ``status`` is the HTTP status to answer,
    ``key`` and ``params`` the catalogue message (``detail`` is it in English)."""

    def __init__(self, status: int, key: str, **params: Any) -> None:
        self.status, self.key, self.params = status, key, params
        self.detail = t(key, DEFAULT_LANGUAGE, **params)
        super().__init__(self.detail)

    def localized(self, lang: str) -> str:
        """The message in ``lang``."""
        return t(self.key, lang, **self.params)


@dataclass(frozen=True)
class SessionInfo:
    """Who a valid token belongs to."""

    user_id: str
    email: str | None
    anonymous: bool
    csrf: str


@dataclass(frozen=True)
class Issued:
    """A new session: the secret (shown once, to the client) and its CSRF token."""

    token: str
    csrf: str
    user_id: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: Characters that render as nothing: an address holding one would be a look-alike account.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def normalise_email(email: str) -> str:
    """One spelling per address, so look-alikes cannot make a second account: Unicode NFKC
    (full-width letters become ASCII), invisible characters removed, surrounding space and a
    trailing dot of the domain dropped, lower case. An address that is still not ASCII after
    that (Cyrillic or Greek look-alikes, a dotted capital I) is refused by :func:`valid_email`;
    internationalised domains are written in their ASCII (punycode) form."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", email)).strip()
    return text.rstrip(".").lower()


def valid_email(email: str) -> bool:
    """A normalised address: ASCII, one ``@``, a dotted domain, at most 320 characters."""
    return email.isascii() and bool(_EMAIL.fullmatch(email)) and len(email) <= 320


def normalise_password(password: str) -> str:
    """NFC, so a password typed on one keyboard (precomposed é) matches the same password
    typed on another (e + combining accent)."""
    return unicodedata.normalize("NFC", password)


class AccountStore:
    """Users and sessions in the service's database."""

    def __init__(self, engine: Any, *, session_days: int = SESSION_DAYS) -> None:
        self.engine = engine
        self.hasher = PasswordHasher()
        self.session_days = session_days
        self._write = threading.Lock()
        # Verifying against a real hash when the email is unknown keeps sign-in's time the same
        # whether or not an account exists (no user enumeration by timing).
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))

    # -- users ---------------------------------------------------------------------------------
    def sign_up(self, email: str, password: str) -> str:
        """Create an account; returns the user id.

        Raises:
            AccountError: 422 for a malformed email or a short password, 409 if taken.
        """
        email = normalise_email(email)
        if not valid_email(email):
            raise AccountError(422, "account.bad_email")
        password = normalise_password(password)
        if len(password) < MIN_PASSWORD or not password.strip():
            raise AccountError(422, "account.short_password", n=MIN_PASSWORD)
        hashed = self.hasher.hash(password)
        with self._write, Session(self.engine) as s, s.begin():
            if s.scalar(select(User.id).where(User.email == email)) is not None:
                raise AccountError(409, "account.taken")
            uid = str(uuid.uuid4())
            s.add(User(id=uid, email=email, password_hash=hashed, anonymous=False,
                       created_at=now()))
        return uid

    def authenticate(self, email: str, password: str) -> str | None:
        """The user id for a correct email and password, else None."""
        with Session(self.engine) as s:
            user = s.scalars(select(User).where(User.email == normalise_email(email),
                                                User.anonymous.is_(False))).first()
        stored = user.password_hash if user is not None and user.password_hash else self._dummy
        # NFC first; the password as typed too, for accounts made before passwords were
        # normalised (their hash is of the raw text).
        for candidate in dict.fromkeys((normalise_password(password), password)):
            try:
                self.hasher.verify(stored, candidate)
            except (VerificationError, InvalidHashError):
                continue
            return user.id if user is not None else None
        return None

    def verify_password(self, user_id: str, password: str) -> bool:
        """Whether ``password`` is the password of account ``user_id`` (False for a device
        without one); asked again before the account is deleted."""
        with Session(self.engine) as s:
            user = s.get(User, user_id)
        if user is None or not user.email:
            return False
        return self.authenticate(user.email, password) == user_id

    def anonymous(self) -> str:
        """A new anonymous device; returns its user id."""
        uid = str(uuid.uuid4())
        with self._write, Session(self.engine) as s, s.begin():
            s.add(User(id=uid, email=None, password_hash=None, anonymous=True, created_at=now()))
        return uid

    def remove_user(self, user_id: str) -> None:
        """Delete a user and every session of it (their analyses are the caller's job)."""
        with self._write, Session(self.engine) as s, s.begin():
            s.execute(delete(AuthToken).where(AuthToken.user_id == user_id))
            s.execute(delete(User).where(User.id == user_id))

    # -- sessions ------------------------------------------------------------------------------
    def issue(self, user_id: str) -> Issued:
        """A new session for ``user_id``."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        created = now()
        expires = created + timedelta(days=self.session_days)
        with self._write, Session(self.engine) as s, s.begin():
            s.add(AuthToken(token_hash=_digest(token), user_id=user_id, csrf=csrf,
                            created_at=created, expires_at=expires))
        return Issued(token, csrf, user_id, expires)

    def lookup(self, token: str) -> SessionInfo | None:
        """The session of ``token`` if it exists and has not expired."""
        if not token or len(token) > 200:
            return None
        with Session(self.engine) as s:
            row = s.execute(select(AuthToken, User).join(User, User.id == AuthToken.user_id)
                            .where(AuthToken.token_hash == _digest(token))).first()
        if row is None:
            return None
        tok, user = row
        expires = tok.expires_at if tok.expires_at.tzinfo else tok.expires_at.replace(
            tzinfo=now().tzinfo)
        if expires <= now():
            return None
        return SessionInfo(user.id, user.email, bool(user.anonymous), tok.csrf)

    def revoke(self, token: str) -> None:
        """End one session."""
        with self._write, Session(self.engine) as s, s.begin():
            s.execute(delete(AuthToken).where(AuthToken.token_hash == _digest(token)))

    def revoke_all(self, user_id: str) -> int:
        """End every session of ``user_id`` on every device ("sign out everywhere"); returns
        how many."""
        with self._write, Session(self.engine) as s, s.begin():
            res = s.execute(delete(AuthToken).where(AuthToken.user_id == user_id))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def purge_expired(self) -> int:
        """Delete expired sessions; returns how many."""
        with self._write, Session(self.engine) as s, s.begin():
            res = s.execute(delete(AuthToken).where(AuthToken.expires_at <= now()))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]
