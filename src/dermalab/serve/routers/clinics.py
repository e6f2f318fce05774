"""The dermatologist finder over the operator's clinic directory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from dermalab.core.i18n import t
from dermalab.serve.dependencies import (
    Language,
    Service,
)
from dermalab.serve.schemas import (
    ClinicCities,
    ClinicResults,
    Problem,
)

clinics = APIRouter(prefix="/v1/clinics", tags=["clinics"])


@clinics.get(
    "",
    response_model=ClinicResults,
    responses={404: {"model": Problem}, 422: {"model": Problem}},
    summary="Nearest dermatology clinics to a position or a city",
)
def find_clinics(
    svc: Service,
    lang: Language,
    response: Response,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    city: Annotated[str | None, Query(max_length=120)] = None,
    urgency: Annotated[str | None, Query(pattern="^(urgent|routine|self-care)$")] = None,
    limit: Annotated[int, Query(ge=1, le=50)] = 5,
) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"
    directory = svc.clinics
    advice = t("clinics.how_to_find", lang)
    if directory is None:
        return {"configured": False, "items": [], "advice": advice}
    if lat is not None and lon is not None:
        origin = (lat, lon)
    elif city and city.strip():
        found = directory.city_centre(city)
        if found is None:
            raise HTTPException(404, t("clinics.no_city", lang, city=city.strip()))
        origin = found
    else:
        raise HTTPException(422, "give lat and lon, or city")
    items = [
        {**c.model_dump(), "distance_km": round(d, 1)}
        for c, d in directory.nearest(*origin, urgent=urgency == "urgent", limit=limit)
    ]
    return {"configured": True, "items": items, "advice": advice}


@clinics.get("/cities", response_model=ClinicCities, summary="Cities in the clinic directory")
def clinic_cities(svc: Service, lang: Language) -> dict[str, Any]:
    directory = svc.clinics
    return {
        "configured": directory is not None,
        "cities": directory.cities() if directory else [],
        "advice": t("clinics.how_to_find", lang),
    }
