"""The dermatologist finder: great-circle distances, the directory's validation, nearest and
urgent-first ordering, city matching, and the API with and without a directory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dermalab.core.errors import DermalabError
from dermalab.serve.app import create_app
from dermalab.serve.clinics import EARTH_RADIUS_KM, haversine_km, load_directory
from tests.serve.helpers import serve_settings

EXAMPLE = Path(__file__).parents[2] / "examples" / "clinics.example.yaml"


def _cosines_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The spherical law of cosines: an independent formula for the same distance."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_KM * math.acos(max(-1.0, min(1.0, c)))


def test_haversine_against_known_distances() -> None:
    quarter = math.pi * EARTH_RADIUS_KM / 2
    assert haversine_km(0, 0, 0, 90) == pytest.approx(quarter, rel=1e-12)
    assert haversine_km(0, 0, 90, 0) == pytest.approx(quarter, rel=1e-12)
    # Antipodes: asin near 1 is ill-conditioned, still within a metre.
    assert haversine_km(10, 20, -10, -160) == pytest.approx(2 * quarter, abs=1e-3)
    assert haversine_km(51.5, -0.1, 51.5, -0.1) == 0.0
    seoul, busan = (37.5665, 126.9780), (35.1796, 129.0756)
    d = haversine_km(*seoul, *busan)
    assert d == pytest.approx(_cosines_km(*seoul, *busan), rel=1e-9)
    assert 320 < d < 330  # published Seoul–Busan great-circle distance: about 325 km
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(2 * math.pi * EARTH_RADIUS_KM
                                                             / 360, rel=1e-9)  # the dateline


def test_the_example_directory_loads_and_says_it_is_an_example() -> None:
    text = EXAMPLE.read_text()
    assert "EXAMPLE ONLY" in text and "invented" in text
    d = load_directory(EXAMPLE)
    assert all("EXAMPLE" in c.name for c in d.clinics)
    assert d.cities() == ["Busan", "Seoul"]


def test_nearest_and_urgent_first(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("name,address,city,latitude,longitude,urgent,specialties,city_names\n"
                 "Near,1 A St,São Paulo,0.0,0.01,no,acne;eczema,상파울루\n"
                 "Far urgent,2 B St,Elsewhere,0.0,1.0,yes,,\n"
                 "Mid urgent,3 C St,São Paulo,0.0,0.3,true,,\n")
    d = load_directory(p)
    assert [c.name for c, _ in d.nearest(0, 0)] == ["Near", "Mid urgent", "Far urgent"]
    # urgent clinics first within 50 km (Mid, 33 km); one 111 km away waits its turn by
    # distance behind a clinic next door
    assert [c.name for c, _ in d.nearest(0, 0, urgent=True)] == ["Mid urgent", "Near",
                                                                 "Far urgent"]
    assert d.city_centre("상파울루") == pytest.approx((0.0, 0.01))
    assert [c.name for c, _ in d.nearest(0, 0, limit=1)] == ["Near"]
    assert d.clinics[0].specialties == ("acne", "eczema")
    assert d.city_centre("  sao   PAULO ") == pytest.approx((0.0, 0.155))
    assert d.city_centre("Nowhere") is None


@pytest.mark.parametrize(("csv_row", "says"), [
    ("X,,Town,1,2,no", "missing address"),
    ("X,A,Town,north,2,no", "must be numbers"),
    ("X,A,Town,127.0,37.5,no", "outside"),
    ("X,A,Town,1,2,maybe", "urgent must be true or false"),
])
def test_bad_entries_are_named(tmp_path: Path, csv_row: str, says: str) -> None:
    p = tmp_path / "c.csv"
    p.write_text("name,address,city,latitude,longitude,urgent\nOK,A,Town,1,2,no\n"
                 f"{csv_row}\n")
    with pytest.raises(DermalabError, match=f"c.csv, row 3: .*{says}"):
        load_directory(p)


def test_korean_city_names_and_a_far_urgent_clinic_in_the_example(tmp_path: Path) -> None:
    """Walk-through defect 5: 서울 and 부산 find their clinics; an urgent search typed as
    Seoul lists Seoul's clinics before Busan's urgent one, 321 km away."""
    from dermalab.serve.clinics import haversine_km

    d = load_directory(EXAMPLE)
    assert d.city_centre("서울") == d.city_centre("Seoul") is not None
    assert d.city_centre("부산") == d.city_centre("busan") is not None
    ranked = [(c.city, round(km)) for c, km in d.nearest(*d.city_centre("서울"), urgent=True)]
    assert [city for city, _ in ranked[:2]] == ["Seoul", "Seoul"]
    busan = next(c for c in d.clinics if c.city == "Busan")
    assert haversine_km(*d.city_centre("Seoul"), busan.latitude, busan.longitude) > 300


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DermalabError, match="no such clinic directory"):
        load_directory(tmp_path / "missing.yaml")
    (tmp_path / "a.yaml").write_text("clinics: {name: x}\n")
    with pytest.raises(DermalabError, match="expected a list of clinics"):
        load_directory(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("clinics: [\n")
    with pytest.raises(DermalabError, match="not valid YAML"):
        load_directory(tmp_path / "b.yaml")
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(DermalabError, match=r"is a \.csv, \.yaml or \.yml file"):
        load_directory(tmp_path / "c.json")
    (tmp_path / "d.yaml").write_text("clinics: []\n")
    with pytest.raises(DermalabError, match="lists no clinic"):
        load_directory(tmp_path / "d.yaml")


def test_the_clinic_api(skin_run: Path, tmp_path: Path) -> None:
    with TestClient(create_app(serve_settings(skin_run, tmp_path, clinics=str(EXAMPLE)))) as c:
        near_busan = c.get("/v1/clinics", params={"lat": 35.10, "lon": 129.03}).json()
        assert near_busan["configured"] is True
        names = [i["name"] for i in near_busan["items"]]
        assert names[0].startswith("EXAMPLE Dermatology Department C")
        assert near_busan["items"][0]["distance_km"] < 12
        assert near_busan["items"][0]["distance_km"] < near_busan["items"][1]["distance_km"]
        # From the centre of Seoul's clinics, the urgent one first for an urgent referral; the
        # urgent one in Busan, 321 km away, after the Seoul clinic next door.
        urgent = c.get("/v1/clinics", params={"city": "seoul", "urgency": "urgent"}).json()
        assert [(i["urgent"], i["city"]) for i in urgent["items"]] == [
            (True, "Seoul"), (False, "Seoul"), (True, "Busan")]
        assert urgent["items"][0]["city"] == "Seoul"
        r = c.get("/v1/clinics", params={"city": "Atlantis"})
        assert r.status_code == 404 and "Atlantis" in r.json()["detail"]
        assert c.get("/v1/clinics").status_code == 422
        assert c.get("/v1/clinics", params={"lat": 91, "lon": 0}).status_code == 422
        assert c.get("/v1/clinics", params={"city": "x", "urgency": "soon"}).status_code == 422
        cities = c.get("/v1/clinics/cities").json()
        assert (cities["configured"], cities["cities"]) == (True, ["Busan", "Seoul"])
    with TestClient(create_app(serve_settings(skin_run, tmp_path))) as c:
        none = c.get("/v1/clinics", params={"lat": 35.1, "lon": 129.0}).json()
        assert none["configured"] is False and none["items"] == []
        assert "dermatologist" in none["advice"]
        cities = c.get("/v1/clinics/cities", params={"lang": "ko"}).json()
        assert (cities["configured"], cities["cities"]) == (False, [])
        assert "피부과" in cities["advice"]
