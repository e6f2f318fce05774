"""Accounts as people use them: a private session for a device, sign-up and sign-in (the
device's analyses move into the account), sign-out, and an account's download and deletion
with everything of it. The users and sessions themselves live in
:class:`~dermalab.serve.accounts.AccountStore`."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from dermalab.core.errors import DermalabError
from dermalab.serve.accounts import AccountStore, Issued, SessionInfo
from dermalab.serve.history import HistoryService


class AccountService:
    """Users, their sessions, and what an account's life does to its analyses."""

    def __init__(self, store: AccountStore, history: HistoryService) -> None:
        self.store = store
        self.history = history

    @property
    def session_days(self) -> int:
        """How long a session lasts."""
        return self.store.session_days

    def lookup(self, token: str) -> SessionInfo | None:
        """The live session of ``token``, if any."""
        return self.store.lookup(token)

    def start_device(self) -> Issued:
        """A private session for a device, without an account."""
        return self.store.issue(self.store.anonymous())

    def sign_up(self, email: str, password: str, device: SessionInfo | None = None,
                device_token: str | None = None) -> Issued:
        """Create an account (:class:`~dermalab.serve.accounts.AccountError` when the email
        is taken or the password too weak) and a session for it; the calling device's
        analyses move into it."""
        uid = self.store.sign_up(email, password)
        self._adopt(device, device_token, uid)
        return self.store.issue(uid)

    def sign_in(self, email: str, password: str, device: SessionInfo | None = None,
                device_token: str | None = None) -> Issued | None:
        """A session for the account, ``None`` for a wrong email or password; the calling
        device's anonymous analyses move into the account."""
        uid = self.store.authenticate(email, password)
        if uid is None:
            return None
        self._adopt(device, device_token, uid)
        return self.store.issue(uid)

    def _adopt(self, device: SessionInfo | None, token: str | None, uid: str) -> None:
        """Move an anonymous device's analyses into account ``uid`` and end its session."""
        if device is not None and device.anonymous:
            if token:
                self.store.revoke(token)
            self.attach(device.user_id, uid)

    def verify_password(self, user_id: str, password: str) -> bool:
        """Whether ``password`` is the account's (asked again before it is deleted)."""
        return self.store.verify_password(user_id, password)

    def sign_out(self, token: str) -> None:
        """End one session."""
        self.store.revoke(token)

    def sign_out_everywhere(self, user_id: str) -> int:
        """End every session of the account; returns how many."""
        return self.store.revoke_all(user_id)

    def attach(self, from_user: str, to_user: str) -> int:
        """Move an anonymous device's analyses to an account and forget the device."""
        return self._remove_user(from_user,
                                 lambda: self.history.store.reassign(from_user, to_user))

    def delete_account(self, user_id: str) -> int:
        """Delete a user, every analysis and every photo of theirs; returns how many."""
        return self._remove_user(user_id, lambda: self.history.delete_photos(
            self.history.store.delete_all_of(user_id)))

    def _remove_user(self, user_id: str, empty: Callable[[], int], tries: int = 20) -> int:
        """Run ``empty`` (move or delete the user's rows; returns how many), then delete the
        user. An upload that lands in between holds the user by its foreign key, so the
        deletion fails and both steps run again: no row or photo outlives its owner."""
        total = 0
        for _ in range(tries):
            total += empty()
            try:
                self.store.remove_user(user_id)
                return total
            except IntegrityError:
                continue
        raise DermalabError(f"user {user_id}: new analyses kept arriving while it was being "
                            "deleted; try again")

    def export(self, user_id: str) -> bytes:
        """A zip of the user's photos and ``analyses.json`` (their data, downloadable)."""
        return self.history.export(user_id)
