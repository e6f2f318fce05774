"""A lesion's history: named spots, each owner's only, the crossing warning, and what happens
to spots when analyses move, age out or the account goes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dermalab.serve.app import create_app
from dermalab.serve.store import now
from tests.serve.helpers import XRW, photo, serve_settings, signup


@pytest.fixture
def client(skin_run: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(serve_settings(skin_run, tmp_path))) as c:
        yield c


def _analyse(c: TestClient, who: dict[str, str], spot: str | None, i: int = 0) -> dict:
    data = {"spot": spot} if spot is not None else {}
    r = c.post("/v1/analyses", files={"file": (f"p{i}.jpg", photo(i))}, data=data,
               headers=who)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _set_malignant(db: Path, analysis_id: str, p: float | None, threshold: float | None
                   ) -> None:
    con = sqlite3.connect(db)
    (raw,) = con.execute("select result_json from analyses where id = ?",
                         (analysis_id,)).fetchone()
    res = json.loads(raw)
    res.update(malignant_probability=p, malignant_threshold=threshold)
    con.execute("update analyses set result_json = ? where id = ?",
                (json.dumps(res), analysis_id))
    if p is not None and threshold is not None:  # the referral such a score gives
        con.execute("update analyses set referral = ? where id = ?",
                    ("urgent" if p >= threshold else "routine", analysis_id))
    con.commit()
    con.close()


def test_a_named_spot_collects_its_photos_over_time(client: TestClient) -> None:
    ann = signup(client, "ann@example.org")
    first = _analyse(client, ann, "Left shoulder mole", 0)
    assert first["spot"]["name"] == "Left shoulder mole"
    second = _analyse(client, ann, "  left shoulder   MOLE ", 1)  # the same spot
    assert second["spot"] == first["spot"]
    other = _analyse(client, ann, "back", 2)
    _analyse(client, ann, None, 3)  # no spot
    spots = client.get("/v1/spots", headers=ann).json()["items"]
    assert [(s["name"], s["count"]) for s in spots] == [("back", 1),
                                                         ("Left shoulder mole", 2)]
    hist = client.get(f"/v1/spots/{first['spot']['id']}", headers=ann).json()
    assert [a["id"] for a in hist["analyses"]] == [first["id"], second["id"]]  # oldest first
    assert hist["analyses"][0]["crossed"] is False
    assert hist["analyses"][0]["top_condition"] == first["conditions"][0]["name"]
    assert client.get(f"/v1/analyses/{other['id']}", headers=ann).json()["spot"]["name"] == "back"
    listed = client.get("/v1/analyses", headers=ann).json()["items"]
    assert {i["spot"] for i in listed} == {"Left shoulder mole", "back", None}
    assert client.post("/v1/analyses", files={"file": ("p.jpg", photo(0))},
                       data={"spot": "x" * 121}, headers=ann).status_code == 422

    bob = signup(client, "bob@example.org")
    assert client.get("/v1/spots", headers=bob).json()["items"] == []
    assert client.get(f"/v1/spots/{first['spot']['id']}", headers=bob).status_code == 404
    mine = _analyse(client, bob, "Left shoulder mole")  # same name: bob's own spot
    assert mine["spot"]["id"] != first["spot"]["id"]
    assert client.get("/v1/spots").status_code == 401
    assert client.get(f"/v1/spots/{first['spot']['id']}").status_code == 401


def test_the_warning_says_when_the_malignant_probability_crossed(client: TestClient,
                                                                  tmp_path: Path) -> None:
    who = signup(client, "cy@example.org")
    a = _analyse(client, who, "mole", 0)
    b = _analyse(client, who, "mole", 1)
    sid = a["spot"]["id"]
    _set_malignant(tmp_path / "h.db", a["id"], 0.10, 0.30)
    _set_malignant(tmp_path / "h.db", b["id"], 0.45, 0.30)
    hist = client.get(f"/v1/spots/{sid}", headers=who).json()
    assert [e["crossed"] for e in hist["analyses"]] == [False, True]
    assert [e["above_threshold"] for e in hist["analyses"]] == [False, True]
    assert "10%" in hist["warning"] and "45%" in hist["warning"] and "30%" in hist["warning"]
    ko = client.get(f"/v1/spots/{sid}?lang=ko", headers=who).json()
    assert ko["warning"] != hist["warning"] and "45%" in ko["warning"]
    _set_malignant(tmp_path / "h.db", a["id"], 0.50, 0.30)  # above both times: no crossing
    hist = client.get(f"/v1/spots/{sid}", headers=who).json()
    assert hist["warning"] is None and not any(e["crossed"] for e in hist["analyses"])
    _set_malignant(tmp_path / "h.db", b["id"], 0.20, 0.30)  # fell below: not a warning
    assert client.get(f"/v1/spots/{sid}", headers=who).json()["warning"] is None


def test_the_spot_advice_does_not_flip_on_a_small_change(client: TestClient,
                                                         tmp_path: Path) -> None:
    """Issue 51: a score wavering around the line (42%, 41%) kept flipping the advice. Urgent
    from the line on, routine again only below line - 5 points; what changed is said."""
    who = signup(client, "dot@example.org")
    rows = [_analyse(client, who, "mole", i) for i in range(4)]
    sid = rows[0]["spot"]["id"]
    for row in rows:  # photos not yet "taken" carry no score, so the advice is the last one's
        _set_malignant(tmp_path / "h.db", row["id"], None, None)
    advice = []
    for row, p in zip(rows, (0.30, 0.42, 0.41, 0.36), strict=True):
        _set_malignant(tmp_path / "h.db", row["id"], p, 0.42)
        hist = client.get(f"/v1/spots/{sid}", headers=who).json()
        advice.append(hist["advice"])
    assert advice == ["routine", "urgent", "urgent", "routine"]
    assert hist["change"] == ("Compared with the previous photo, the probability of a possibly "
                              "malignant lesion went from 41% to 36% (we advise seeing a "
                              "dermatologist soon from 42%).")
    assert "Advice for this spot: keep watching it" in hist["advice_text"]
    _set_malignant(tmp_path / "h.db", rows[3]["id"], 0.38, 0.42)  # within the band: urgent
    hist = client.get(f"/v1/spots/{sid}?lang=ko", headers=who).json()
    assert hist["advice"] == "urgent" and "37%" in hist["advice_text"]  # the lower line, 42 - 5


def test_the_spot_advice_agrees_with_the_last_urgent_referral(client: TestClient,
                                                                tmp_path: Path) -> None:
    """A last photo referred urgently below the line (by the other model's second opinion)
    makes the spot's advice urgent too: the spot view never says "keep watching" under a
    result that says "see a dermatologist soon"."""
    who = signup(client, "urgent@example.org")
    rows = [_analyse(client, who, "mole", i) for i in range(2)]
    sid = rows[0]["spot"]["id"]
    for row in rows:
        _set_malignant(tmp_path / "h.db", row["id"], 0.20, 0.42)
    con = sqlite3.connect(tmp_path / "h.db")
    con.execute("update analyses set referral = 'routine' where id = ?", (rows[1]["id"],))
    con.commit()
    assert client.get(f"/v1/spots/{sid}", headers=who).json()["advice"] == "routine"
    con.execute("update analyses set referral = 'urgent' where id = ?", (rows[1]["id"],))
    con.commit()
    con.close()
    assert client.get(f"/v1/spots/{sid}", headers=who).json()["advice"] == "urgent"


@pytest.mark.parametrize(("points", "want"), [
    ([(0.1, 0.3), (0.3, 0.3), (0.26, 0.3), (0.24, 0.3)], [False, True, True, False]),
    ([(None, None), (0.5, 0.3), (None, None)], [None, True, True]),
    ([(0.28, 0.3)], [False]),  # a first photo just under the line is routine
    ([(0.1, 0.3), (0.9, 0.3), (0.1, 0.3)], [False, True, False]),
])
def test_spot_urgency_has_hysteresis(points: list, want: list) -> None:
    from dermalab.serve.answer import spot_urgency

    assert spot_urgency(points, band=0.05) == want


def _spot_rows(db: Path) -> list[tuple[str, str | None]]:
    con = sqlite3.connect(db)
    rows = con.execute("select name, owner_id from spots order by name").fetchall()
    con.close()
    return rows


def test_spots_move_with_the_device_and_go_with_the_account(client: TestClient,
                                                            tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    acct = signup(client, "dee@example.org")
    _analyse(client, acct, "Mole", 0)
    r = client.post("/v1/auth/anonymous", headers=XRW)
    device = {"Authorization": f"Bearer {r.json()['token']}"}
    client.cookies.clear()
    _analyse(client, device, "mole", 1)  # the same name: merged into the account's spot
    _analyse(client, device, "arm", 2)
    assert client.post("/v1/auth/signin", json={"email": "dee@example.org",
                                                "password": "a long password"},
                       headers=device).status_code == 200
    spots = client.get("/v1/spots", headers=acct).json()["items"]
    assert sorted((s["name"], s["count"]) for s in spots) == [("Mole", 2), ("arm", 1)]
    moved = client.get("/v1/analyses", headers=acct).json()["items"]
    assert sorted(str(i["spot"]) for i in moved) == ["Mole", "Mole", "arm"]
    one = client.get(f"/v1/analyses/{moved[1]['id']}", headers=acct).json()
    assert one["spot"]["name"] == "Mole"  # as the spot is now, not as it was stored
    assert len(_spot_rows(db)) == 2
    assert client.request("DELETE", "/v1/account", headers=acct,
                          json={"password": "a long password"}).status_code == 204
    assert _spot_rows(db) == []


def test_retention_removes_spots_left_empty(client: TestClient, tmp_path: Path) -> None:
    who = signup(client, "eve@example.org")
    _analyse(client, who, "mole", 0)
    svc = client.app.state.services.retention  # type: ignore[attr-defined]
    assert svc.purge_older_than(30, at=now() + timedelta(days=29)) == 0
    assert len(_spot_rows(tmp_path / "h.db")) == 1
    assert svc.purge_older_than(30, at=now() + timedelta(days=31)) == 1
    assert _spot_rows(tmp_path / "h.db") == []
