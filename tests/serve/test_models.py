"""One service, two models: the image-type router sends a real DermNet clinical photo to the
clinical model and a real HAM10000 image to the dermoscopy model, flags photos that are not
skin, and yields to the user's word on how a photo was taken."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermalab.cli import main
from dermalab.core.errors import DermalabError
from dermalab.data.negatives import load_photo, negative_images
from dermalab.deploy.router import TYPES, ImageRouter, predict_proba, router_input
from dermalab.serve.app import create_app
from dermalab.serve.service import build_services
from dermalab.serve.settings import ServeSettings
from tests.conftest import HAM_DIR
from tests.served_runs import dermnet_photos


def _settings(tmp: Path, skin_run: Path, clinical_run: Path, router: Path | None,
              **kw: object) -> ServeSettings:
    return ServeSettings(run_dir=str(skin_run), more_runs=(str(clinical_run),),
                         router=str(router) if router else None,
                         database_url=f"sqlite:///{tmp / 'h.db'}",
                         image_store=str(tmp / "uploads"), max_upload_bytes=4 * 1024 * 1024,
                         **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(skin_run: Path, clinical_run: Path, router_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("serve2")
    with TestClient(create_app(_settings(tmp, skin_run, clinical_run, router_dir))) as c:
        session = c.post("/v1/auth/anonymous", headers={"X-Requested-With": "dermalab"}).json()
        c.headers["Authorization"] = f"Bearer {session['token']}"
        yield c


def _ham_test_image(run: Path) -> Path:
    with open(run / "splits.csv") as f:
        ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    return HAM_DIR / "images" / f"{ids[0]}.jpg"


def _post(client: TestClient, name: str, data: bytes, **form: str) -> dict:
    r = client.post("/v1/analyses", files={"file": (name, data)}, data=form)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_each_photo_type_is_answered_by_its_own_model(client: TestClient, skin_run: Path,
                                                       clinical_run: Path) -> None:
    # clinical photos the clinical model never trained on (it saw the first 24 per folder)
    for folder, i in (("Psoriasis", 60), ("Acne vulgaris", 200), ("Vitiligo", 50)):
        photo = dermnet_photos(folder)[i]
        body = _post(client, photo.name, photo.read_bytes())
        assert body["model"] == {"name": clinical_run.name, "image_type": "clinical"}, folder
        assert body["routing"]["chosen_by"] == "router"
        assert body["routing"]["image_type"] == "clinical"
        assert body["routing"]["probabilities"]["clinical"] > 0.5
        assert "clinical-photo model" in body["routing"]["text"]
        assert body["verdict"] in ("ok", "uncertain"), (folder, body["routing"])
        assert {c["class_name"] for c in body["conditions"]} <= {
            "Acne vulgaris", "Psoriasis", "Vitiligo"}
        assert body["heatmap_png"].startswith("data:image/png;base64,")
    ham = _ham_test_image(skin_run)
    body = _post(client, ham.name, ham.read_bytes())
    assert body["model"]["image_type"] == "dermoscopic"
    assert body["routing"] == {**body["routing"], "image_type": "dermoscopic",
                               "chosen_by": "router"}
    assert body["verdict"] in ("ok", "uncertain")
    assert body["conditions"][0]["class_name"] in ("mel", "nv", "bkl", "bcc")


def test_a_phone_photo_to_the_dermoscopy_model_alone_is_not_sure_and_says_why(
        skin_run: Path, router_dir: Path, tmp_path: Path) -> None:
    """Only the dermoscopy model served, with the router: a phone photo is not answered as if
    that model knew such photos (issue 50); the person's own word still chooses it."""
    settings = ServeSettings(run_dir=str(skin_run), router=str(router_dir),
                             database_url=f"sqlite:///{tmp_path / 'h.db'}",
                             image_store=str(tmp_path / "uploads"),
                             max_upload_bytes=4 * 1024 * 1024)
    with TestClient(create_app(settings)) as c:
        session = c.post("/v1/auth/anonymous", headers={"X-Requested-With": "dermalab"}).json()
        c.headers["Authorization"] = f"Bearer {session['token']}"
        photo = dermnet_photos("Psoriasis")[60]
        body = _post(c, photo.name, photo.read_bytes())
        assert body["routing"]["unserved"] == "clinical"
        assert body["model"]["image_type"] == "dermoscopic"
        assert body["verdict"] == "uncertain" and body["conditions"]
        assert "not trained on such photos" in body["routing"]["text"]
        ko = c.get(f"/v1/analyses/{body['id']}", params={"lang": "ko"}).json()
        assert "학습하지 않아" in ko["routing"]["text"]
        told = _post(c, photo.name, photo.read_bytes(), image_type="dermoscopic")
        assert told["routing"].get("unserved") is None
        assert "as you said" in told["routing"]["text"]
        ham = _ham_test_image(skin_run)
        assert _post(c, ham.name, ham.read_bytes())["routing"].get("unserved") is None


def test_the_users_word_chooses_the_model(client: TestClient, skin_run: Path) -> None:
    photo = dermnet_photos("Psoriasis")[61]
    body = _post(client, photo.name, photo.read_bytes(), image_type="dermoscopic")
    assert body["model"]["image_type"] == "dermoscopic"
    assert body["routing"]["chosen_by"] == "user"
    assert "as you said" in body["routing"]["text"]
    ko = client.get(f"/v1/analyses/{body['id']}", params={"lang": "ko"}).json()
    assert ko["routing"]["text"] != body["routing"]["text"] and "모델" in ko["routing"]["text"]


@pytest.mark.parametrize("pixels", [
    pytest.param(lambda: load_photo("skimage", "immunohistochemistry"), id="histology-slide"),
    pytest.param(lambda: load_photo("skimage", "text"), id="printed-text"),
    pytest.param(lambda: load_photo("sklearn", "flower.jpg"), id="flower"),
    pytest.param(lambda: next(n.image for n in negative_images("test", rendered_per_kind=1)
                              if n.kind == "screenshot"), id="screenshot"),
])
def test_photos_that_are_not_skin_are_flagged(client: TestClient, pixels: object) -> None:
    """Held-out non-skin photos: none of these sources was used to fit the router."""
    body = _post(client, "x.jpg", _jpeg(pixels()), spot="left arm")  # type: ignore[operator]
    assert body["verdict"] == "not_skin", body["routing"]
    assert body["conditions"] == [] and body["heatmap_png"] is None
    # not kept (it may be anything personal), nor filed under the spot it was sent with
    assert body["photo_kept"] is False and body["spot"] is None
    assert client.get(f"/v1/analyses/{body['id']}/photo").status_code == 404
    assert client.get(f"/v1/analyses/{body['id']}").json()["verdict"] == "not_skin"


def test_age_sex_and_site_are_weighed_by_the_model_that_knows_them(
        client: TestClient, skin_run: Path) -> None:
    from dermalab.deploy.predictor import Predictor

    ham = _ham_test_image(skin_run)
    health = client.get("/healthz").json()["metadata"]
    assert health["fields"] == ["age", "sex", "localization"]
    assert health["sexes"] == ["female", "male"] and "face" in health["sites"]
    plain = _post(client, ham.name, ham.read_bytes(), image_type="dermoscopic")
    given = _post(client, ham.name, ham.read_bytes(), image_type="dermoscopic", age="75",
                  sex="male", site="face")
    assert plain["metadata_used"] == [] and given["metadata_used"] == ["age", "sex",
                                                                       "localization"]
    # The answer is the run's own fusion of the photo's logits with that row.
    pred = Predictor.load(skin_run)
    logits = pred.logits(pred.preprocess(str(ham))[None])
    expected = pred.calibrated(logits, [{"age": 75.0, "sex": "male",
                                         "localization": "face"}])[0]
    top = given["conditions"][0]
    assert top["probability"] == pytest.approx(expected.max(), abs=1e-4)
    assert top["class_name"] == pred.info.classes[int(expected.argmax())]
    assert pred.metadata_model is not None and pred.metadata_model.weight > 0
    assert plain["conditions"][0]["probability"] != pytest.approx(top["probability"], abs=1e-6)
    stored = client.get(f"/v1/analyses/{given['id']}").json()
    assert stored["metadata_used"] == given["metadata_used"]
    # A fused answer is judged "not sure" by the line fitted on fused validation answers.
    lines = json.loads((skin_run / "decision.json").read_text())["decision"]
    assert 0.4 <= lines["uncertain_threshold_metadata"] <= 1
    assert plain["uncertain_threshold"] == lines["uncertain_threshold"]
    assert given["uncertain_threshold"] == lines["uncertain_threshold_metadata"]
    # A site the model does not know: one line naming the ones it does, nothing stored.
    before = client.get("/v1/analyses").json()["total"]
    r = client.post("/v1/analyses", files={"file": (ham.name, ham.read_bytes())},
                    data={"image_type": "dermoscopic", "site": "elbow"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("body site 'elbow' is not one this model knows: [")
    assert client.get("/v1/analyses").json()["total"] == before
    for bad in ({"age": "200"}, {"age": "old"}, {"sex": "robot"}):
        r = client.post("/v1/analyses", files={"file": (ham.name, ham.read_bytes())},
                        data={"image_type": "dermoscopic", **bad})
        assert r.status_code == 422, bad
    # The clinical model has no metadata model: what was given is not used, and it says so.
    photo = dermnet_photos("Psoriasis")[60]
    body = _post(client, photo.name, photo.read_bytes(), age="40", site="elbow")
    assert body["model"]["image_type"] == "clinical" and body["metadata_used"] == []


def test_models_endpoint_and_health(client: TestClient, clinical_run: Path) -> None:
    cards = client.get("/v1/models").json()
    assert [c["image_type"] for c in cards] == ["dermoscopic", "clinical"]
    assert cards[1]["name"] == clinical_run.name and "clinical photos" in cards[1][
        "limitations"][0]
    assert set(cards[1]["classes"]) == {"Acne vulgaris", "Psoriasis", "Vitiligo"}
    health = client.get("/healthz").json()
    assert health["models"] == ["dermoscopic", "clinical"] and health["router"] is True


def test_a_type_not_served_is_refused(skin_run: Path, tmp_path: Path) -> None:
    settings = ServeSettings(run_dir=str(skin_run), database_url=f"sqlite:///{tmp_path / 'h'}",
                             image_store=str(tmp_path / "u"), open=True)
    with TestClient(create_app(settings)) as c:
        photo = dermnet_photos("Psoriasis")[62]
        r = c.post("/v1/analyses", files={"file": (photo.name, photo.read_bytes())},
                   data={"image_type": "clinical"})
        assert r.status_code == 422 and "clinical" in r.json()["detail"]
        body = c.post("/v1/analyses", files={"file": (photo.name, photo.read_bytes())}).json()
        assert body["routing"]["chosen_by"] == "single"


def test_several_models_need_a_router_and_distinct_types(
        skin_run: Path, clinical_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DermalabError, match="router fit"):
        build_services(_settings(tmp_path, skin_run, clinical_run, None))
    with pytest.raises(DermalabError, match="second dermoscopic model"):
        build_services(ServeSettings(run_dir=str(skin_run), more_runs=(str(skin_run),)))
    with pytest.raises(DermalabError, match="not a router folder"):
        ImageRouter.load(tmp_path)


def test_serve_reads_a_models_file_and_says_what_is_wrong(
        skin_run: Path, clinical_run: Path, router_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from dermalab.cli import serve_models

    file = tmp_path / "models.yaml"
    file.write_text(f"models:\n  - run: {skin_run}\n  - run: {clinical_run}\n"
                    f"    image_type: clinical\nrouter: {router_dir}\n")
    runs, types, router = serve_models([str(file)], None)
    assert runs == [str(skin_run), str(clinical_run)]
    assert types == ((str(clinical_run), "clinical"),) and router == str(router_dir)
    file.write_text("models: {run: x}\n")
    assert main(["serve", str(file)]) == 2
    assert "needs `models:`" in capsys.readouterr().err
    # two models, no router: refused before listening, in one line
    assert main(["serve", str(skin_run), str(clinical_run), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "router fit" in err and err.count("\n") == 1


def test_router_probabilities_match_scikit_learn(router_dir: Path) -> None:
    """The router's stored weights reproduce what scikit-learn would answer: the softmax of
    the standardised features times the coefficients (checked here against a refit of
    LogisticRegression's predict_proba on the same weights)."""
    from sklearn.linear_model import LogisticRegression

    router = ImageRouter.load(router_dir)
    meta = json.loads((router_dir / "router.json").read_text())
    assert router.types == [t for t in TYPES if t in meta["fit_images"]]
    images = np.stack([router_input(n.image) for n in negative_images(
        "test", crops_per_photo=1, rendered_per_kind=1)[:6]])
    f = router.features(images)
    clf = LogisticRegression()
    clf.classes_ = np.arange(len(router.types))
    clf.coef_, clf.intercept_ = router.coef, router.intercept
    expected = clf.predict_proba((f - router.shift) / router.scale)
    got = predict_proba(f, router.shift, router.scale, router.coef, router.intercept)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(router.probabilities(images), got, rtol=1e-6)


def test_close_up_views_are_centre_crops() -> None:
    """A close-up view keeps the middle share of each side: the pixels of that box exactly."""
    from dermalab.deploy.router_fit import closeup_views

    image = np.arange(150 * 200 * 3, dtype=np.uint32).reshape(150, 200, 3)
    half, third = closeup_views(image, (0.5, 0.33))
    np.testing.assert_array_equal(half, image[37:112, 50:150])
    np.testing.assert_array_equal(third, image[50:100, 67:133])
    with pytest.raises(DermalabError, match="share of each side"):
        closeup_views(image, (1.5,))


@pytest.mark.slow
def test_the_router_learns_close_ups_and_reports_them(
        skin_run: Path, clinical_run: Path, router_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked to (``--closeups``), the router learns two close-up views per photo besides the
    whole frames, the non-skin class weighted up, and its record holds the close-ups' own
    held-out confusion: every validation photo's views, rows = true type. By default it
    learns whole frames only."""
    from dermalab.deploy.router_fit import CLOSEUP_NOT_SKIN_WEIGHT, CLOSEUPS

    plain = json.loads((router_dir / "router.json").read_text())
    assert (plain["closeups"], plain["not_skin_weight"]) == ([], 1.0)
    assert "val_closeup" not in plain
    out = tmp_path / "router"
    monkeypatch.setenv("DERMALAB_CACHE", str(tmp_path / "cache"))
    assert main(["router", "fit", str(skin_run), str(clinical_run), "--out", str(out),
                 "--per-run", "40", "--closeups", "--no-progress"]) == 0
    assert "close-ups (centre crops 0.5, 0.33" in capsys.readouterr().out
    meta = json.loads((out / "router.json").read_text())
    assert meta["closeups"] == list(CLOSEUPS)
    assert meta["not_skin_weight"] == CLOSEUP_NOT_SKIN_WEIGHT
    # the non-skin photos get the same views (else a crop itself reads as skin)
    assert meta["fit_images"]["not_skin"] == (1 + len(CLOSEUPS)) * len(negative_images("fit"))
    whole, views = meta["val"]["images"], meta["val_closeup"]["images"]
    for kind in ("dermoscopic", "clinical"):
        assert views[kind] == len(CLOSEUPS) * whole[kind] > 0
        matrix = np.asarray(meta["val_closeup"]["confusion"]["matrix"])
        assert matrix[meta["types"].index(kind)].sum() == views[kind]
    assert views["not_skin"] == 0


def test_an_unsure_router_asks_the_other_model_too(skin_run: Path, clinical_run: Path,
                                                   router_dir: Path, tmp_path: Path) -> None:
    """Below ``second_opinion_below`` (here always), the model of the other kind of photo
    checks the photo as well: its verdict is in the routing, and when it refers urgently the
    answer does, naming that model, while the conditions stay the chosen model's. Above the
    line (here never) nobody else is asked."""
    # a phone photo: the clinical model answers, the dermoscopy model (which has malignant
    # classes) is the other
    photo = dermnet_photos("Psoriasis")[70].read_bytes()
    svc = build_services(_settings(tmp_path, skin_run, clinical_run, router_dir, open=True,
                                   second_opinion_below=1.01)).analysis
    first = svc.analyze(photo, "spot.jpg")
    chosen, other = first["model"]["image_type"], "dermoscopic"
    assert chosen == "clinical"
    second = first["routing"]["second_opinion"]
    assert (second["image_type"], second["model"]) == (other, svc.models[other].name)
    assert "was asked too" in first["routing"]["text"]
    # the other model's line at 0: it refers urgently, and the answer says who found what
    svc.models[other].info.decision.malignant_threshold = 0.0
    urgent = svc.analyze(photo, "spot.jpg")
    assert urgent["routing"]["second_opinion"]["urgent"] is True
    assert urgent["referral"] == "urgent"
    assert "looked at it too" in urgent["referral_text"]
    assert [c["class_name"] for c in urgent["conditions"]] == \
        [c["class_name"] for c in first["conditions"]]
    never = build_services(_settings(tmp_path / "never", skin_run, clinical_run, router_dir,
                                     open=True, second_opinion_below=None)).analysis
    assert "second_opinion" not in never.analyze(photo, "spot.jpg")["routing"]
    # The API answers it too, and keeps it with the stored analysis (its schema once dropped
    # the field, so only the referral said a second model had looked)
    with TestClient(create_app(_settings(tmp_path / "api", skin_run, clinical_run, router_dir,
                                         open=True, second_opinion_below=1.01))) as c:
        r = c.post("/v1/analyses", files={"file": ("spot.jpg", photo)},
                   headers={"X-Requested-With": "dermalab"})
        assert r.status_code == 201, r.text
        sent = r.json()["routing"]["second_opinion"]
        assert set(sent) == set(second) and sent["urgent"] == second["urgent"]
        assert sent["image_type"] == other and sent["model"] == svc.models[other].name
        assert sent["malignant_probability"] == pytest.approx(second["malignant_probability"])
        stored = c.get(f"/v1/analyses/{r.json()['id']}").json()["routing"]["second_opinion"]
        assert stored == sent
