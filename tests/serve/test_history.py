"""The web service's per-concern services on a real SQLite database and photo folder, without
a model: each owner's history (``HistoryService``), accounts (``AccountService``) and what is
forgotten (``RetentionService``). The API and browser tests use them through the routes."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dermalab.serve.account_service import AccountService
from dermalab.serve.accounts import AccountStore
from dermalab.serve.answer import load_conditions
from dermalab.serve.history import HistoryService
from dermalab.serve.render import Renderer
from dermalab.serve.retention import RetentionService
from dermalab.serve.settings import ServeSettings
from dermalab.serve.store import HistoryStore, ImageStore, make_engine, now
from dermalab.serve.uploads import UploadError

PHOTO = b"\xff\xd8 a photo \xff\xd9"


class Services:
    """The three services over one database and one photo folder, as ``build_services`` wires
    them (the renderer's model is a stand-in: only its name and class names are read)."""

    def __init__(self, root: Path) -> None:
        engine = make_engine(f"sqlite:///{root / 'h.db'}")
        model: Any = SimpleNamespace(name="m", info=SimpleNamespace(
            display_names={"nv": "naevus", "mel": "melanoma"}))
        self.photos = root / "photos"
        self.history = HistoryService(HistoryStore(engine), ImageStore(str(self.photos)),
                                      Renderer({"dermoscopic": model}, load_conditions()))
        self.store = AccountStore(engine)
        self.accounts = AccountService(self.store, self.history)
        self.retention = RetentionService(self.history, self.store,
                                          ServeSettings(run_dir=str(root)))

    def file(self, owner: str, spot: str | None = None, photo: bytes | None = PHOTO,
             cls: str = "nv", at: Any = None) -> str:
        """File an answered analysis for ``owner``; returns its id."""
        aid = str(uuid.uuid4())
        self.history.record(
            {"id": aid, "created_at": at or now(), "filename": "p.jpg", "verdict": "ok",
             "referral": "routine", "conditions": [{"class_name": cls, "probability": 0.8}],
             "malignant_probability": 0.1, "malignant_threshold": 0.3,
             "model": {"name": "m", "image_type": "dermoscopic"}},
            photo, owner, spot)
        return aid


@pytest.fixture
def svc(tmp_path: Path) -> Services:
    return Services(tmp_path)


def test_an_owner_sees_only_their_own_analyses_photos_and_spots(svc: Services) -> None:
    ann, bob = svc.store.anonymous(), svc.store.anonymous()
    aid = svc.file(ann, spot="left arm")
    other = svc.file(bob, spot="back")
    got = svc.history.get(aid, "ko", owner=ann)
    assert got is not None and got["spot"]["name"] == "left arm"
    assert got["language"] == "ko" and got["conditions"][0]["name"]  # rendered in Korean
    assert svc.history.photo(aid, ann) == PHOTO
    for read in (svc.history.get(other, owner=ann), svc.history.photo(other, ann),
                 svc.history.spot(svc.history.spots(bob)[0]["id"], owner=ann)):
        assert read is None
    assert [s["name"] for s in svc.history.spots(ann)] == ["left arm"]
    page = svc.history.page(10, 0, owner=ann)
    assert page["total"] == 1 and page["items"][0]["top_condition"] == "Melanocytic nevus (mole)"
    assert not svc.history.delete(aid, owner=bob)
    assert svc.history.delete(aid, owner=ann)
    assert svc.history.get(aid, owner=ann) is None
    assert sorted(p.name for p in svc.photos.iterdir()) == [f"{other}.jpg"]


def test_a_photo_not_kept_is_neither_stored_nor_filed_under_a_spot(svc: Services) -> None:
    ann = svc.store.anonymous()
    aid = svc.file(ann, spot="left arm", photo=None)
    assert svc.history.photo(aid, ann) is None and svc.history.spots(ann) == []
    assert not svc.photos.exists() or not any(svc.photos.iterdir())


def test_filing_for_a_deleted_owner_is_refused_and_keeps_nothing(svc: Services) -> None:
    ann = svc.store.anonymous()
    svc.accounts.delete_account(ann)
    with pytest.raises(UploadError) as err:
        svc.file(ann, spot="left arm")
    assert err.value.status == 401
    assert not svc.photos.exists() or not any(svc.photos.iterdir())


def test_signing_up_moves_the_device_analyses_in_and_ends_the_device_session(
        svc: Services) -> None:
    device = svc.accounts.start_device()
    session = svc.accounts.lookup(device.token)
    assert session is not None and session.anonymous
    aid = svc.file(device.user_id, spot="mole")
    issued = svc.accounts.sign_up("ann@example.org", "a long passphrase 1", session,
                                  device.token)
    assert svc.accounts.lookup(device.token) is None  # the device's session ended
    assert svc.history.get(aid, owner=issued.user_id) is not None
    assert [s["name"] for s in svc.history.spots(issued.user_id)] == ["mole"]
    assert svc.accounts.sign_in("ann@example.org", "wrong password") is None
    again = svc.accounts.sign_in("ANN@example.org", "a long passphrase 1")
    assert again is not None and again.user_id == issued.user_id
    assert svc.accounts.sign_out_everywhere(issued.user_id) == 2
    assert svc.accounts.lookup(issued.token) is None and svc.accounts.lookup(again.token) is None


def test_an_account_downloads_and_deletes_everything_of_its_own(svc: Services) -> None:
    ann, bob = svc.store.anonymous(), svc.store.anonymous()
    mine = [svc.file(ann, spot="mole"), svc.file(ann, cls="mel")]
    theirs = svc.file(bob)
    with zipfile.ZipFile(io.BytesIO(svc.accounts.export(ann))) as zf:
        listed = json.loads(zf.read("analyses.json"))["analyses"]
        assert sorted(a["id"] for a in listed) == sorted(mine)
        assert {a["photo"] for a in listed} == {f"photos/{i}.jpg" for i in mine}
        assert zf.read(f"photos/{mine[0]}.jpg") == PHOTO
    assert svc.accounts.delete_account(ann) == 2
    assert sorted(p.name for p in svc.photos.iterdir()) == [f"{theirs}.jpg"]
    assert svc.history.get(theirs, owner=bob) is not None


def test_retention_forgets_old_analyses_and_the_sweep_what_a_crash_left(svc: Services) -> None:
    ann = svc.store.anonymous()
    old = svc.file(ann, at=now() - timedelta(days=40))
    new = svc.file(ann)
    assert svc.retention.purge_older_than(30) == 1
    assert svc.history.get(old, owner=ann) is None and svc.history.get(new, owner=ann)
    # a photo without its analysis (a deletion cut short) and an analysis whose photo was
    # never written (an upload cut short)
    (svc.photos / "stray.jpg").write_bytes(PHOTO)
    (svc.photos / f"{new}.jpg").unlink()
    assert svc.retention.orphan_grace_s == 0.0  # the run's own stores: nothing in flight
    assert svc.retention.sweep_orphans() == (1, 1)
    assert svc.history.get(new, owner=ann) is None and not any(svc.photos.iterdir())
