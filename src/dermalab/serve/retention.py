"""What the service forgets, and when: analyses older than the retention period (with their
photos and expired sessions), and after a crash the photos no analysis refers to and the
analyses whose photo never got written."""

from __future__ import annotations

from datetime import datetime, timedelta

from dermalab.serve.accounts import AccountStore
from dermalab.serve.history import HistoryService
from dermalab.serve.settings import ServeSettings
from dermalab.serve.store import now


class RetentionService:
    """Retention and the start-up clean-up of one service's history and photos."""

    def __init__(self, history: HistoryService, accounts: AccountStore,
                 settings: ServeSettings) -> None:
        self.history = history
        self.accounts = accounts
        self.settings = settings

    @property
    def orphan_grace_s(self) -> float:
        """How old a photo-less analysis must be before the start-up sweep deletes it: 0 when
        the database and photos are the run's own (only this process writes them, and at
        start-up it has nothing in flight), else 10 minutes, since another server sharing
        them may be between writing a row and its photo."""
        s = self.settings
        if s.orphan_grace_s is not None:
            return s.orphan_grace_s
        return 0.0 if s.database_url is None and s.image_store is None else 600.0

    def sweep_orphans(self, grace_s: float | None = None) -> tuple[int, int]:
        """Start-up clean-up after a crash: photos no analysis refers to (a deletion cut short)
        and temporary files of writes cut short are deleted, and analyses older than
        ``grace_s`` (default :attr:`orphan_grace_s`) whose photo never got written (an upload
        cut short, never answered). Returns (photos, analyses) removed."""
        grace_s = self.orphan_grace_s if grace_s is None else grace_s
        images, store = self.history.images, self.history.store
        images.sweep_temporaries(grace_s)
        refs = store.image_refs()
        keys = set(images.list_keys())  # one listing (an S3 listing is paged I/O)
        stray = keys - refs
        for key in stray:
            images.delete(key)
        dead = store.without_photo(keys & refs, now() - timedelta(seconds=grace_s))
        return len(stray), len(dead)

    def purge_older_than(self, days: int, at: datetime | None = None) -> int:
        """Retention: delete analyses older than ``days`` with their photos, and the expired
        sessions; returns how many analyses."""
        n = self.history.delete_photos(
            self.history.store.delete_older_than((at or now()) - timedelta(days=days)))
        self.accounts.purge_expired()
        return n
