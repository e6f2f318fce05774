"""A person's history: their analyses, the photos kept with them, their named spots over time
and the download of all of it. Nothing here is visible to another owner: every read and
write names its owner."""

from __future__ import annotations

import io
import json
from typing import Any

from sqlalchemy.exc import IntegrityError

from dermalab.core.i18n import DEFAULT_LANGUAGE
from dermalab.serve.render import Renderer
from dermalab.serve.store import OPEN, Analysis, HistoryStore, ImageStore, Owner
from dermalab.serve.timeline import spot_view
from dermalab.serve.uploads import UploadError

#: The photo key of an analysis whose photo was not kept (not skin).
NO_PHOTO = ""


class HistoryService:
    """The analyses and photos of every owner, each seen only by its owner."""

    def __init__(self, store: HistoryStore, images: ImageStore, renderer: Renderer) -> None:
        self.store = store
        self.images = images
        self.renderer = renderer

    def record(self, result: dict[str, Any], photo: bytes | None, owner: Owner,
               spot: str | None) -> None:
        """File an answered analysis (``result``, in English) for ``owner``, under their spot
        named ``spot`` if given (``result["spot"]`` says which), with its ``photo`` (``None``:
        not kept). The row is written before the photo: a crash in between leaves a row
        whose photo is missing (shown as such), never an unlisted photo that no deletion
        would reach. 401 when the owner was deleted meanwhile (nothing of it is left)."""
        analysis_id = result["id"]
        key = f"{analysis_id}.jpg" if photo is not None else NO_PHOTO
        try:  # the owner must still exist (a foreign key): not if deleted since the request
            named = (self.store.spot_named(spot, owner)
                     if photo is not None and spot and spot.strip() else None)
            result["spot"] = {"id": named.id, "name": named.name} if named else None
            self.store.add(Analysis(
                id=analysis_id, created_at=result["created_at"], filename=result["filename"],
                verdict=result["verdict"], referral=result["referral"], image_ref=key,
                size_bytes=len(photo or b""),
                result_json=json.dumps({**result,
                                        "created_at": result["created_at"].isoformat()}),
                owner_id=None if owner is OPEN else str(owner),
                spot_id=named.id if named else None))
        except IntegrityError:
            raise UploadError(401, "upload.owner_gone") from None
        if photo is not None:
            self.images.put(key, photo)
        if not self.store.exists(analysis_id):
            # The owner's deletion took the row while the photo was being written: the photo
            # goes too, and the upload is answered as not kept.
            if photo is not None:
                self.images.delete(key)
            raise UploadError(401, "upload.owner_gone")

    def get(self, analysis_id: str, lang: str = DEFAULT_LANGUAGE, owner: Owner = OPEN
            ) -> dict[str, Any] | None:
        """One of ``owner``'s stored analyses, in ``lang`` (None for anyone else's)."""
        row = self.store.get(analysis_id, owner)
        if row is None:
            return None
        return self.renderer.localize(
            {**json.loads(row.result_json),
             "spot": self._spot_ref(row, self.store.spot_names(owner))}, lang)

    @staticmethod
    def _spot_ref(row: Analysis, names: dict[str, str]) -> dict[str, str] | None:
        """The row's spot as it is now (spots merge when a device's analyses move)."""
        return ({"id": row.spot_id, "name": names[row.spot_id]}
                if row.spot_id and row.spot_id in names else None)

    def photo(self, analysis_id: str, owner: Owner) -> bytes | None:
        """The stored photo of one of ``owner``'s analyses."""
        row = self.store.get(analysis_id, owner)
        return self.read_photo(row.image_ref) if row is not None else None

    def read_photo(self, key: str) -> bytes | None:
        """A stored photo by its key; ``None`` when it was not kept or is missing."""
        if key == NO_PHOTO:  # a photo that was not of skin: never kept
            return None
        try:
            return self.images.read(key)
        except FileNotFoundError:  # a crash between the row and the photo: said as missing
            return None

    def delete_photos(self, rows: list[Analysis]) -> int:
        """Delete the photos of analyses whose rows are gone; returns how many rows."""
        for r in rows:
            if r.image_ref != NO_PHOTO:
                self.images.delete(r.image_ref)
        return len(rows)

    def page(self, limit: int, offset: int, lang: str = DEFAULT_LANGUAGE, owner: Owner = OPEN
             ) -> dict[str, Any]:
        """A page of ``owner``'s summaries (condition names in ``lang``)."""
        rows, total = self.store.page(limit, offset, owner)
        names = self.store.spot_names(owner)
        items = []
        for r in rows:
            res = json.loads(r.result_json)
            top = res["conditions"][0] if res["conditions"] else None
            items.append({"id": r.id, "created_at": res["created_at"], "filename": r.filename,
                          "verdict": r.verdict, "referral": r.referral,
                          "top_condition": (self.renderer.condition_name(top["class_name"],
                                                                         lang)
                                            if top else None),
                          "top_probability": top["probability"] if top else None,
                          "spot": names.get(r.spot_id) if r.spot_id else None})
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    def spots(self, owner: Owner) -> list[dict[str, Any]]:
        """``owner``'s named spots, most recently photographed first."""
        return [{"id": sp.id, "name": sp.name, "count": n, "last_at": last}
                for sp, n, last in self.store.spots(owner)]

    def spot(self, spot_id: str, lang: str = DEFAULT_LANGUAGE, owner: Owner = OPEN
             ) -> dict[str, Any] | None:
        """One of ``owner``'s spots over time (:func:`~dermalab.serve.timeline.spot_view`):
        every analysis of it oldest first, the warning when the malignant probability crossed
        its line between the last two photos, and the advice. ``None`` for another owner's
        spot."""
        found = self.store.spot(spot_id, owner)
        if found is None:
            return None
        sp, rows = found
        return spot_view(sp.id, sp.name, rows, lang, self.renderer.condition_name)

    def delete(self, analysis_id: str, owner: Owner = OPEN) -> bool:
        """Delete one of ``owner``'s analyses and its stored image."""
        row = self.store.delete(analysis_id, owner)
        if row is None:
            return False
        self.delete_photos([row])
        return True

    def export(self, user_id: str) -> bytes:
        """A zip of the user's photos and ``analyses.json`` (their data, downloadable)."""
        import zipfile

        rows = self.store.all_of(user_id)
        spot_names = self.store.spot_names(user_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            items = []
            for r in rows:
                res = json.loads(r.result_json)
                res.pop("heatmap_png", None)
                if res.get("lesion"):
                    res["lesion"] = {k: v for k, v in res["lesion"].items()
                                     if k != "outline_png"}
                photo = self.read_photo(r.image_ref)
                if photo is not None:
                    zf.writestr(f"photos/{r.image_ref}", photo)
                items.append({**res, "photo": f"photos/{r.image_ref}" if photo else None,
                              "spot": spot_names.get(r.spot_id) if r.spot_id else None})
            zf.writestr("analyses.json", json.dumps({"analyses": items}, indent=2))
        return buf.getvalue()
