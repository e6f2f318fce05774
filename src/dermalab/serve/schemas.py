"""API schemas (pydantic): every field is documented in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dermalab.core.i18n import DEFAULT_LANGUAGE, t

DISCLAIMER = t("disclaimer", DEFAULT_LANGUAGE)


class Condition(BaseModel):
    """One likely condition with its calibrated probability and plain-language information."""

    class_name: str = Field(description="The model's class label (e.g. 'mel').")
    name: str = Field(description="Readable name of the condition.")
    probability: float = Field(ge=0, le=1, description="Calibrated probability (temperature "
                                                       "scaling fitted on validation data).")
    urgency: Literal["urgent", "routine", "self-care"] = Field(
        description="How soon this condition usually needs a doctor.")
    description: str = Field(description="What the condition is, in plain words.")
    care: str = Field(description="First-line care information.")
    see_doctor: str = Field(description="When to see a doctor.")


class SpotRef(BaseModel):
    """A named spot: one lesion photographed over time."""

    id: str = Field(description="Identifier of the spot.")
    name: str = Field(description="The name its owner gave it (e.g. 'left shoulder mole').")


class Lesion(BaseModel):
    """The lesion as the model's segmenter outlined it: descriptive measurements after the
    ABCD rule of dermoscopy (Stolz et al.), not a diagnosis."""

    area_share: float = Field(description="Lesion pixels / photo pixels.")
    asymmetry_major: float = Field(description="0 = mirror-symmetric about the major axis.")
    asymmetry_minor: float = Field(description="0 = mirror-symmetric about the minor axis.")
    compactness: float = Field(description="4π·area/perimeter²: 1 = a disc; lower = a more "
                                           "irregular border.")
    colours: list[str] = Field(description="Dermoscopic colours covering at least 5% of the "
                                           "lesion (white, red, light_brown, dark_brown, "
                                           "blue_grey, black).")
    diameter_px: float = Field(description="Largest diameter, in the photo's pixels.")
    outline_png: str = Field(description="The photo with the outline drawn (PNG data URL).")


ImageType = Literal["dermoscopic", "clinical"]  # the kinds of photo a served model is for


class ModelRef(BaseModel):
    """A served model: which one, and for which kind of photo."""

    name: str = Field(description="The served run's name (see /v1/models).")
    image_type: ImageType = Field(description="The kind of photo it was trained on and "
                                              "answers for.")


class SecondOpinion(BaseModel):
    """The other skin model's own check of the photo, asked when the router was unsure."""

    model: str = Field(description="The other model's name.")
    image_type: Literal["dermoscopic", "clinical"] = Field(
        description="The kind of photo that model was trained on.")
    malignant_probability: float | None = Field(
        description="Its summed probability of the malignant classes (null: it has none).")
    malignant_threshold: float | None = Field(
        description="Its line for 'see a dermatologist soon' (null: it has none).")
    urgent: bool = Field(description="Whether its own answer would refer urgently; if so, "
                                     "this answer's referral is urgent too.")


class Routing(BaseModel):
    """Why that model answered."""

    image_type: Literal["dermoscopic", "clinical", "not_skin"] = Field(
        description="What the photo was taken to be: a dermoscopic close-up, an ordinary "
                    "(clinical/phone) photo of skin, or not skin (the router's finding, "
                    "whoever chose the model).")
    chosen_by: Literal["router", "user", "single"] = Field(
        description="'router': the image-type router chose the model; 'user': the photo's "
                    "type was given with the upload; 'single': only one model is served.")
    probabilities: dict[str, float] | None = Field(
        description="The router's probability of each image type; null without a router.")
    unserved: Literal["dermoscopic", "clinical"] | None = Field(
        None, description="The kind of skin photo the router found when no served model was "
                          "trained on it (e.g. a phone photo with only the dermoscopy model): "
                          "the answer is then 'uncertain'. Null otherwise.")
    second_opinion: SecondOpinion | None = Field(
        None, description="When the router chose a skin model with a probability below the "
                          "server's --second-opinion-below: the other skin model's check of "
                          "the same photo (it can only raise the referral to urgent; the "
                          "conditions stay the answering model's). Null otherwise.")
    text: str = Field(description="Which model answered and why, in plain words.")


class AnalysisOut(BaseModel):
    """The result of analysing one photo."""

    id: str = Field(description="Identifier of the stored analysis.")
    created_at: datetime = Field(description="When the photo was analysed (UTC).")
    filename: str = Field(description="The uploaded file's name.")
    verdict: Literal["ok", "uncertain", "not_skin"] = Field(
        description="'ok': a confident prediction; 'uncertain': the model is not sure (top "
                    "probability below the threshold chosen on validation); 'not_skin': the "
                    "photo does not look like the skin images the model was trained on.")
    verdict_text: str = Field(description="The verdict in plain words.")
    referral: Literal["urgent", "routine", "self-care"] | None = Field(
        description="'urgent' when a possibly malignant lesion is probable above its operating "
                    "point; else 'routine' or 'self-care'; null for not-skin photos.")
    referral_text: str = Field(description="The recommendation in plain words.")
    conditions: list[Condition] = Field(description="Top-k conditions, most probable first "
                                                    "(empty for not-skin photos).")
    malignant_probability: float | None = Field(
        description="Calibrated probability of any possibly malignant class (mel, bcc, akiec).")
    malignant_threshold: float | None = Field(
        description="Operating point chosen on validation for 90% sensitivity.")
    ood_score: float = Field(description="Distance from the training images (Mahalanobis).")
    ood_threshold: float = Field(description="Above this score the photo is called not-skin.")
    ood_colour_score: float | None = Field(
        description="Distance of the photo's colour statistics from the training images'.")
    ood_colour_threshold: float | None = Field(
        description="Above this colour distance the photo is also called not-skin.")
    uncertain_threshold: float = Field(description="Below this top probability: 'uncertain'.")
    heatmap_png: str | None = Field(description="Grad-CAM overlay as a data: URL (PNG), showing "
                                                "where the model looked; null for not-skin.")
    spot: SpotRef | None = Field(None, description="The named spot this photo belongs to.")
    model: ModelRef | None = Field(None, description="The model that answered (null for "
                                                     "analyses stored before it was named).")
    routing: Routing | None = Field(None, description="Why that model answered.")
    metadata_used: list[Literal["age", "sex", "localization"]] = Field(
        default_factory=list, description="Which of the age, sex and body site you gave the "
        "model weighed beside the photo (their values are not stored); empty when none was "
        "given or the model does not use them.")
    lesion: Lesion | None = Field(None, description="The outlined lesion and its "
                                                    "measurements, when the model brings a "
                                                    "segmenter; null otherwise.")
    disclaimer: str = Field(default=DISCLAIMER, description="Always shown: not a diagnosis.")
    language: str = Field(default=DEFAULT_LANGUAGE, description="Language of the plain-language "
                          "fields: from the request's Accept-Language header or its 'lang' "
                          "parameter (en, ko); English when neither names a supported one.")
    quality: dict[str, Any] | None = Field(
        default=None, description="Checks of the photo itself (dermalab.data.photo_quality): "
                                  "'issues' (blurred, dark, bright; glare and small_spot when "
                                  "their lines are set: both were measured and are off), the "
                                  "measures behind them, and 'text', what to do, in the "
                                  "answer's language. Advice only: the analysis is given "
                                  "either way.")
    photo_kept: bool = Field(default=True, description="Whether the photo is stored with the "
                             "analysis: not for a photo found not to be of skin (it may be "
                             "anything personal), which is also never filed under a spot.")


class Messages(BaseModel):
    """The web page's texts in one language."""

    language: str = Field(description="The language chosen (en, ko).")
    languages: dict[str, str] = Field(description="Supported languages: code -> own name.")
    messages: dict[str, str] = Field(description="Message key -> text ({name}-style fields).")


class Outcome(BaseModel):
    """What one analysis found, in brief."""

    id: str = Field(description="The analysis (its photo: /v1/analyses/{id}/photo).")
    created_at: datetime = Field(description="When (UTC).")
    verdict: str = Field(description="ok | uncertain | not_skin.")
    referral: str | None = Field(description="urgent | routine | self-care | null.")
    top_condition: str | None = Field(description="Name of the most probable condition.")
    top_probability: float | None = Field(description="Its calibrated probability.")


class AnalysisSummary(Outcome):
    """A history entry."""

    filename: str = Field(description="Uploaded file name.")
    spot: str | None = Field(None, description="Name of the spot it was filed under.")


class AnalysisPage(BaseModel):
    """A page of the history, newest first."""

    items: list[AnalysisSummary] = Field(description="Analyses on this page.")
    total: int = Field(description="Number of stored analyses.")
    limit: int = Field(description="Page size.")
    offset: int = Field(description="Offset of this page.")


class ModelCard(ModelRef):
    """What the model is, how well it did, and what it is not for."""

    backbone: str = Field(description="Network architecture.")
    classes: dict[str, str] = Field(description="Class label -> readable name.")
    image_size: int = Field(description="Input side in pixels.")
    training_data: str = Field(description="Dataset the model was trained on.")
    test_metrics: dict[str, float | None] = Field(
        description="The served answers for held-out test photos alone (lesion-grouped split).")
    test_intervals: dict[str, list[float] | None] = Field(
        default_factory=dict, description="95% intervals of test_metrics (lesion bootstrap).")
    calibration: dict[str, float | None] = Field(description="Temperature and ECE before/after.")
    decision: dict[str, Any] | None = Field(
        default=None, description="The served rule: the class shares its probabilities assume.")
    malignant_operating_point: dict[str, Any] | None = Field(
        description="Threshold, sensitivity and specificity on test, with 95% intervals.")
    skin_types: dict[str, Any] = Field(
        default_factory=dict,
        description="Balanced accuracy and malignant sensitivity on test per Fitzpatrick "
                    "skin-type group (skin_type: labelled; skin_type_estimated: from each "
                    "photo's healthy skin), with 95% intervals and the worst-to-best gap.")
    inference_backend: str = Field(description="onnxruntime or torch.")
    intended_use: str = Field(description="What the model is for.")
    limitations: list[str] = Field(description="Known limits.")
    disclaimer: str = Field(default=DISCLAIMER, description="Not a diagnosis.")


class Problem(BaseModel):
    """An error, without internals."""

    detail: str = Field(description="What went wrong, in plain words.")


class Credentials(BaseModel):
    """Email and password (JSON only: a cross-site HTML form cannot send it)."""

    email: str = Field(max_length=320, description="Your email address.")
    password: str = Field(min_length=1, max_length=1024, description="At least 8 characters.")


class AccountDeletion(BaseModel):
    """What deleting an account asks again: its password (a device without an account sends
    nothing)."""

    password: str | None = Field(None, max_length=1024, description="The account's password.")


class SessionOut(BaseModel):
    """A session: who is signed in, and what the page needs to make requests."""

    mode: str = Field(description="'accounts', or 'open' for a single-user install with no "
                                  "accounts (every analysis visible to whoever uses it).")
    user_id: str | None = None
    email: str | None = None
    anonymous: bool | None = Field(None, description="A private session of this device, "
                                                     "without an account.")
    csrf_token: str | None = Field(None, description="Send it as X-CSRF-Token with every "
                                                     "write made with the session cookie.")
    token: str | None = Field(None, description="Bearer token for API clients (shown once, at "
                                                "sign-in; the page uses the HttpOnly cookie).")


class SpotSummary(SpotRef):
    """One of your spots."""

    count: int = Field(description="Number of analyses of this spot.")
    last_at: datetime | None = Field(description="When it was last photographed (UTC).")


class SpotList(BaseModel):
    """Your spots, most recently photographed first."""

    items: list[SpotSummary]


class SpotEntry(Outcome):
    """One photo of a spot."""

    malignant_probability: float | None = Field(description="Calibrated probability of any "
                                                            "possibly malignant class.")
    malignant_threshold: float | None = Field(description="The operating point it is "
                                                          "compared with.")
    above_threshold: bool | None = Field(description="Malignant probability at or above the "
                                                     "operating point.")
    crossed: bool = Field(description="Below the operating point at the previous photo, at or "
                                      "above it at this one.")


class SpotHistory(SpotRef):
    """A spot over time: change is the 'E' (evolving) of the ABCDE rule."""

    analyses: list[SpotEntry] = Field(description="Its analyses, oldest first.")
    warning: str | None = Field(description="Said when the malignant probability crossed the "
                                            "operating point since the previous photo.")
    advice: Literal["urgent", "routine"] | None = Field(
        None, description="The spot's advice after its last photo, with hysteresis: urgent "
                          "from the operating point on, routine again only 5 points below it "
                          "(None when the model has no malignant score).")
    advice_text: str | None = Field(None, description="The advice in words.")
    change: str | None = Field(None, description="What changed since the previous photo, in "
                                                 "words (the malignant probability).")
    disclaimer: str = Field(default=DISCLAIMER, description="Not a diagnosis.")
    language: str = Field(default=DEFAULT_LANGUAGE, description="Language of the texts.")


class Clinic(BaseModel):
    """One clinic of the operator's directory (``--clinics``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    address: str
    city: str
    latitude: float = Field(ge=-90, le=90, description="Degrees (WGS-84).")
    longitude: float = Field(ge=-180, le=180, description="Degrees (WGS-84).")
    phone: str | None = None
    website: str | None = None
    specialties: tuple[str, ...] = ()
    urgent: bool = Field(False, description="Accepts urgent referrals.")
    hours: str | None = None
    city_names: tuple[str, ...] = Field((), description="The city's name in other languages "
                                                        "or spellings (matched too).")


class ClinicOut(Clinic):
    """A clinic with its distance from the search origin."""

    distance_km: float = Field(description="Great-circle distance from the search origin.")


class ClinicResults(BaseModel):
    """The nearest suitable clinics, or how to find a dermatologist without a directory."""

    configured: bool = Field(description="Whether this server has a clinic directory.")
    items: list[ClinicOut] = Field(description="Nearest first; for an urgent referral, "
                                               "clinics accepting urgent referrals first.")
    advice: str = Field(description="How to find a dermatologist (always given; the only "
                                    "answer when no directory is configured).")


class ClinicCities(BaseModel):
    """The cities a typed city is matched against."""

    configured: bool
    cities: list[str]
    advice: str = Field(description="How to find a dermatologist.")
