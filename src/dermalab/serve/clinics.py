"""A dermatologist finder over a directory the operator provides (``dermalab serve
--clinics FILE``): the nearest suitable clinics to a position or a city, by great-circle
distance; for an urgent referral, those that accept urgent referrals first.

The directory is a CSV or YAML file (see ``examples/clinics.example.yaml``) with, per clinic:
``name``, ``address``, ``city``, ``latitude``, ``longitude`` (required), ``phone``,
``website``, ``specialties`` (a list, or ``;``-separated in CSV), ``urgent`` (accepts urgent
referrals: true/false), ``hours`` and ``city_names`` (the city's name in other languages or
spellings, e.g. ``[서울]`` for Seoul, so a person can type it as they know it) (optional).
dermalab ships no directory: it never invents a clinic.
"""

from __future__ import annotations

import csv
import math
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from dermalab.core.errors import DermalabError
from dermalab.serve.schemas import Clinic

#: For an urgent referral, clinics that accept urgent referrals come first only within this
#: distance: an urgent clinic in another city is no help before a dermatologist next door.
URGENT_RADIUS_KM = 50.0
EARTH_RADIUS_KM = 6371.0088  # the IUGG mean radius R1 = (2a + b) / 3 of the WGS-84 ellipsoid
REQUIRED = ("name", "address", "city", "latitude", "longitude")
TRUE = {"true", "yes", "1", "y"}
FALSE = {"false", "no", "0", "n", ""}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees.

    The haversine formula (Sinnott, "Virtues of the Haversine", Sky and Telescope 68(2), 1984):
    ``a = sin²(Δφ/2) + cos φ1 · cos φ2 · sin²(Δλ/2)``, ``d = 2R · asin(√a)``, on a sphere of
    the mean Earth radius; within 0.5% of the ellipsoidal distance, plenty to sort clinics.
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def city_key(name: str) -> str:
    """A city name for matching what a person types: no accents, case or extra spaces
    (``"  SÃO paulo"`` and ``"Sao Paulo"`` match)."""
    plain = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return " ".join(plain.split()).casefold()


def _clinic(raw: dict[str, Any], where: str) -> Clinic:
    """One validated clinic from a row or mapping; ``where`` names it in errors."""
    if not isinstance(raw, dict):
        raise DermalabError(f"{where}: expected a mapping of clinic fields, got "
                            f"{type(raw).__name__}")
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise DermalabError(f"{where}: missing {', '.join(missing)}; every clinic needs "
                            f"{', '.join(REQUIRED)}")
    try:
        lat, lon = float(raw["latitude"]), float(raw["longitude"])
    except (TypeError, ValueError):
        raise DermalabError(f"{where}: latitude/longitude must be numbers in degrees, got "
                            f"{raw['latitude']!r}, {raw['longitude']!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise DermalabError(f"{where}: latitude {lat} / longitude {lon} outside "
                            f"[-90, 90] / [-180, 180] (swapped?)")
    urgent = raw.get("urgent", False)
    if not isinstance(urgent, bool):
        word = str(urgent).strip().lower()
        if word not in TRUE | FALSE:
            raise DermalabError(f"{where}: urgent must be true or false, got {urgent!r}")
        urgent = word in TRUE
    def items(key: str) -> tuple[str, ...]:
        value = raw.get(key) or ()
        return tuple(str(s).strip() for s in (value.split(";") if isinstance(value, str)
                                              else value) if str(s).strip())

    def text(key: str) -> str | None:
        value = raw.get(key)
        return str(value).strip() if value not in (None, "") else None

    return Clinic(name=str(raw["name"]).strip(), address=str(raw["address"]).strip(),
                  city=str(raw["city"]).strip(), latitude=lat, longitude=lon,
                  phone=text("phone"), website=text("website"),
                  specialties=items("specialties"), urgent=bool(urgent), hours=text("hours"),
                  city_names=items("city_names"))


def load_directory(path: str | Path) -> ClinicDirectory:
    """Read and validate a CSV or YAML directory.

    Raises:
        DermalabError: a missing or unreadable file, or an entry without a required field,
            with a non-numeric or out-of-range position, naming the file and the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise DermalabError(f"{path}: no such clinic directory (a CSV or YAML file; see "
                            f"examples/clinics.example.yaml)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DermalabError(f"{path}: cannot read the clinic directory ({exc})") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        clinics = [_clinic(r, f"{path}, row {i + 2}") for i, r in enumerate(rows)]
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DermalabError(f"{path}: not valid YAML ({exc})") from None
        entries = doc.get("clinics") if isinstance(doc, dict) else doc
        if not isinstance(entries, list):
            raise DermalabError(f"{path}: expected a list of clinics (or a 'clinics:' list)")
        clinics = [_clinic(c, f"{path}, clinic {i + 1}") for i, c in enumerate(entries)]
    else:
        raise DermalabError(f"{path}: a clinic directory is a .csv, .yaml or .yml file")
    if not clinics:
        raise DermalabError(f"{path}: the clinic directory lists no clinic")
    return ClinicDirectory(clinics, source=str(path))


class ClinicDirectory:
    """The loaded directory, searched by position or by city."""

    def __init__(self, clinics: list[Clinic], source: str = "") -> None:
        self.clinics, self.source = clinics, source
        by_city: dict[str, list[Clinic]] = {}
        for c in clinics:
            for name in {city_key(n) for n in (c.city, *c.city_names)}:
                by_city.setdefault(name, []).append(c)
        self._by_city = by_city

    def cities(self) -> list[str]:
        """Every city with a clinic (as first written in the directory), sorted."""
        return sorted({c.city for c in self.clinics}, key=city_key)

    def city_centre(self, city: str) -> tuple[float, float] | None:
        """The mean position of ``city``'s clinics (a typed city stands for its clinics'
        centre), or None for a city the directory does not list."""
        found = self._by_city.get(city_key(city))
        if not found:
            return None
        return (sum(c.latitude for c in found) / len(found),
                sum(c.longitude for c in found) / len(found))

    def nearest(self, lat: float, lon: float, urgent: bool = False, limit: int = 5
                ) -> list[tuple[Clinic, float]]:
        """The ``limit`` nearest clinics with their distance in km; with ``urgent``, the ones
        that accept urgent referrals within ``URGENT_RADIUS_KM`` come first (each group
        nearest first): farther away, distance alone orders them."""
        scored = [(c, haversine_km(lat, lon, c.latitude, c.longitude)) for c in self.clinics]
        scored.sort(key=lambda cd: (not (urgent and cd[0].urgent and cd[1] <= URGENT_RADIUS_KM),
                                    cd[1], cd[0].name))
        return scored[:limit]
