"""Experiment configuration: one frozen dataclass per stage, nested in :class:`ExperimentConfig`.

A config is built from defaults, then a YAML file, then ``key=value`` overrides
(``train.epochs=1 data.image_size=64``); values are parsed as YAML scalars/lists. Unknown keys are
errors that list the valid keys, because a typo silently ignored would train the wrong model.
The resolved config is saved as ``config.yaml`` in the run directory, and every function receives
only the sub-config it needs.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from dermalab.core.errors import ConfigError
from dermalab.core.schema import AtLeast, build

# The choices of the keys that take one of a few words, next to the fields that use them: a new
# loss, sampler or schedule is a word added here and a branch where it is built.
DataFormat = Literal["auto", "folder", "ham10000", "medmnist", "hmnist", "isic2019", "csv"]
AgeImpute = Literal["median", "none"]
ResizeMode = Literal["squash", "pad", "crop"]
ImageType = Literal["dermoscopic", "clinical"]
InputMode = Literal["raw", "masked", "crop", "raw+masked", "mask_channel"]
SplitBy = Literal["group", "image"]
Conflicts = Literal["drop", "keep", "error"]
Sampler = Literal["none", "oversample", "sqrt"]
LossName = Literal["ce", "weighted_ce", "focal", "cb", "la"]
CbType = Literal["softmax", "sigmoid", "focal"]
OptimName = Literal["sgd", "adam", "adamw", "rmsprop"]
SchedName = Literal["none", "step", "cosine", "plateau"]
Monitor = Literal["balanced_accuracy", "macro_f1", "accuracy", "roc_auc_macro", "loss"]
Precision = Literal["auto", "no", "bf16", "fp16"]
CamMethod = Literal["gradcam", "gradcam++"]
PriorRule = Literal["fit", "training", "uniform"]
#: The patient metadata dermalab can weigh (eval.metadata; dermalab.core.metadata encodes them).
MetadataField = Literal["age", "sex", "localization"]
METADATA_FIELDS: tuple[str, ...] = typing.get_args(MetadataField)
NonNegative = Annotated[float, AtLeast(0.0)]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (applied on the cached, resized uint8 images)."""

    scale_min: float = 0.6  # RandomResizedCrop lower area bound; 1.0 disables cropping
    hflip: bool = True
    vflip: bool = True  # dermoscopy has no canonical orientation
    rotation: float = 30.0  # degrees, uniform in [-rotation, rotation]
    color_jitter: float = 0.15  # brightness/contrast/saturation strength; 0 disables
    hue: float = 0.02
    # false: torchvision steps per image in the data loader; true: one affine warp and one
    # colour matrix per image on the whole uint8 batch, much cheaper on a CPU
    # (dermalab.data.batch_augment)
    batched: bool = False
    # Mixup / CutMix (dermalab.train.mixing): Beta(alpha, alpha) concentrations, 0 disables;
    # mix_prob is the share of training batches mixed (both set: half CutMix, half Mixup)
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    """Where the images are, how they are split, decoded and cached."""

    # a folder, CSV or .npz (a local path or an s3:// URI), or a named dataset (ham10000,
    # dataset://dermamnist/128: see `dermalab data list`), downloaded on first use
    source: str | None = None
    format: DataFormat = "auto"
    # csv: which column holds what (dermalab.data.tables.read_csv_manifest): image, label and
    # optionally group, split, skin_type (Fitzpatrick I-VI), age, sex, localization
    columns: dict[str, str] = field(default_factory=dict)
    # several datasets in one training set, each {name, source, format, columns, class_map,
    # image_dirs} mapped into one taxonomy (dermalab.data.sources.read_sources); each source is
    # split on its own, its groups kept; data.source is then unused
    sources: list[dict[str, Any]] = field(default_factory=list)
    image_dirs: list[str] = field(default_factory=list)  # HAM10000: folders holding <image_id>.jpg
    class_map: dict[str, str | None] = field(default_factory=dict)  # rename/merge; null drops
    age_impute: AgeImpute = "median"  # HAM10000 missing age
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 42
    split_by: SplitBy = "group"  # group (lesion + identical files) | image (leaky; comparisons)
    split_file: str | None = None  # an external splits.csv (sample_id -> split) to use as is
    allow_leaks: bool = False  # accept an external split whose groups cross splits (papers)
    official_split: bool = True  # MedMNIST: keep the published train/val/test split
    image_size: int | None = None  # None: the backbone's own input size
    resize_mode: ResizeMode = "squash"  # how the aspect ratio is handled
    cache: bool = True
    cache_dir: str | None = None  # default: $DERMALAB_CACHE or ~/.cache/dermalab
    skip_bad: bool = False  # list bad files in a report and go on, instead of failing
    # byte-identical images under different labels: drop (warn, leave them out) | keep (warn)
    # | error (stop)
    conflicts: Conflicts = "drop"
    # near-duplicates (re-encoded, resized, lightly cropped copies: dermalab.data.near_duplicates)
    # are grouped like identical files when both perceptual hashes are within this many bits of
    # 64; -1 turns the check off; null (auto): 8 for folders of images (no group ids), off for
    # sources whose lesion/patient ids group them already (see bench/results/near_duplicates.md)
    near_duplicates: Annotated[int, AtLeast(-1)] | None = None
    # lesion masks: a folder of <id>_segmentation.png / <id>.png / <stem>_mask.png, or
    # "labelme" (JSON beside each image); mask_labels: the Labelme labels that are lesion
    masks: str | None = None
    mask_labels: list[str] = field(default_factory=list)
    # the classifier's input (dermalab.data.lesion): raw | masked | crop | raw+masked |
    # mask_channel; all but raw need data.masks for training, and a mask or data.segmenter
    # (a `dermalab segment train` run, copied into the run) at inference
    input: InputMode = "raw"
    crop_margin: float = 0.1  # crop: margin around the lesion's box, a share of its size
    segmenter: str | None = None
    # what kind of photo the images are: dermoscopic (through a dermatoscope) | clinical (an
    # ordinary camera/phone photo); the web service routes each upload to the model of its kind
    image_type: ImageType = "dermoscopic"
    sampler: Sampler = "none"  # oversample: class-balanced; sqrt: balanced by sqrt count
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, pretrained weights and head."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None  # a local weights file (state dict) for the backbone
    dropout: float = 0.2
    freeze_epochs: int = 0  # train only the head for the first N epochs
    # Keep the stem and the first N stages (timm's coarse parameter groups) at their pretrained
    # weights for the whole run: no backward through them, so each step is cheaper.
    freeze_stages: int = 0
    # Fold those stages' frozen BatchNorms into their convolutions while training (exact:
    # dermalab.train.fold); false only to measure what the fold saves.
    fold_frozen_bn: bool = True
    # Compute timm's TF-style "same" padding inside the convolution while training, instead of
    # padding a copy of every input (exact: dermalab.train.same_pad); false only to measure it.
    static_same_pad: bool = True
    channels_last: bool = True
    # An ensemble of this many runs of the recipe, seeds train.seed, train.seed + 1, ...: each
    # a complete run in RUN_DIR/members/, combined into one model (dermalab.core.models.Ensemble).
    members: Annotated[int, AtLeast(1)] = 1


@dataclass(frozen=True)
class LossConfig:
    """Loss and class-imbalance weighting (see :mod:`dermalab.train.losses`)."""

    name: LossName = "ce"  # la: logit-adjusted
    label_smoothing: NonNegative = 0.0
    gamma: NonNegative = 2.0  # focal loss focusing parameter
    beta: float = 0.999  # class-balanced effective-number parameter
    cb_type: CbType = "focal"  # class-balanced variant
    tau: NonNegative = 1.0  # logit-adjusted loss: the scale of its log-prior offsets


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser."""

    name: OptimName = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    backbone_lr_mult: float = 1.0  # body LR = lr * mult (discriminative fine-tuning)
    # PyTorch's fused kernels for sgd/adam/adamw (the same update up to float rounding);
    # false only to measure what they save.
    fused: bool = True


@dataclass(frozen=True)
class SchedConfig:
    """Learning-rate schedule, stepped once per epoch."""

    name: SchedName = "cosine"
    warmup_epochs: int = 0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs
    gamma: float = 0.1
    patience: int = 2  # plateau
    min_lr: float = 1e-6


@dataclass(frozen=True)
class TrainConfig:
    """The loop: epochs, batches, seed, early stopping, precision."""

    epochs: int = 30
    batch_size: int = 32
    eval_batch_size: int = 64
    seed: int = 42
    monitor: Monitor = "balanced_accuracy"  # on validation
    patience: int = 6  # early stopping; 0 disables
    # Exponential moving average of the weights (timm ModelEmaV3, decay warmed up from 0):
    # validation, best.pt and everything after training use the average. 0 disables.
    ema_decay: float = 0.0
    min_delta: float = 0.0
    mixed_precision: Precision = "auto"  # auto: bf16/fp16 on GPU, none on CPU
    cpu: bool = False  # force CPU even when a GPU is present
    max_batches: int | None = None  # cap batches per epoch (smoke runs)
    threads: int | None = None  # torch intra-op threads; None: torch's default


@dataclass(frozen=True)
class EvalConfig:
    """What the final evaluation adds: calibration, TTA, the malignant operating point,
    subgroups and the Grad-CAM gallery of the report."""

    malignant_classes: list[str] = field(default_factory=lambda: ["mel", "bcc", "akiec"])
    target_sensitivity: float = 0.9  # operating point for "any malignant-suspect class"
    ece_bins: int = 15
    tta: bool = False  # also evaluate with flip test-time augmentation
    gallery: int = 12  # worst-misclassified test images shown with Grad-CAM (0: none)
    cam_method: CamMethod = "gradcam"
    report: bool = True  # write report.html at the end of training
    serving: bool = True  # fit the web service's "not skin" and "not sure" thresholds
    ood_target_fpr: float = 0.02  # share of genuine val images allowed to be called not-skin
    uncertain_target_accuracy: float = 0.85  # accuracy required above the "not sure" line
    # Patient metadata weighed beside the image (late fusion, dermalab.core.metadata): any of
    # age, sex, localization. Fitted on the training split, weighted on validation; [] = off.
    metadata: list[MetadataField] = field(default_factory=list)
    # Estimate each test image's skin tone from its healthy skin (Individual Typology Angle,
    # dermalab.data.skin_tone) and report the subgroups by estimated Fitzpatrick type too.
    skin_tone: bool = True
    # The served decision (dermalab.core.decision): the class prior the shown probabilities
    # and the top class assume. fit: tau in [0, 1] on validation (the highest balanced
    # accuracy among the tau whose validation accuracy reaches min_accuracy); training: the
    # training shares (tau 0); uniform: every class equally likely (tau 1).
    prior: PriorRule = "fit"
    min_accuracy: NonNegative = 0.0
    # 95% intervals: lesion-grouped bootstrap resamples of the evaluated split (0: none)
    bootstrap: Annotated[int, AtLeast(0)] = 1000


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow experiment tracking."""

    enabled: bool = True
    uri: str | None = None  # default: sqlite:///<run dir parent>/mlflow.db
    experiment: str = "dermalab"
    artifact_location: str | None = None  # new experiments store artifacts here (s3://...)
    upload_to: str | None = None  # s3://bucket/prefix: the run directory is pushed there
    tags: dict[str, str] = field(default_factory=dict)  # MLflow run tags (tune: parent run)


@dataclass(frozen=True)
class SegmentConfig:
    """Lesion segmentation (``dermalab segment``): a U-Net on an ImageNet-pretrained encoder.

    Uses ``data`` (source, ``data.masks``, split) and ``train.seed``/``train.threads`` too.
    """

    encoder: str = "tf_efficientnet_lite0"  # a backbone name (offline weights for the default)
    pretrained: bool = True
    image_size: int = 128
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5  # loss = w * soft Dice + (1 - w) * BCE
    threshold: float = 0.5  # on the sigmoid probability
    patience: int = 4  # epochs without a better validation Dice before stopping (0: never)
    postprocess: bool = True  # keep the largest region and fill its holes (ISIC Task 1)
    max_batches: int | None = None  # cap per epoch (smoke tests)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs, nested by stage."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML, checkpoints and MLflow)."""
    return dataclasses.asdict(cfg)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params, tables)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and name not in ("data.class_map",
                                                                 "tracking.tags"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return key, value


def from_dict(tree: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested mapping."""
    return typing.cast(ExperimentConfig, build(ExperimentConfig, tree, ""))


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = ()
) -> ExperimentConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated.

    Args:
        path: optional YAML file whose top-level keys are config sections.
        overrides: ``dotted.key=value`` strings, applied in order.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or value outside its choices.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        tree = loaded
        _resolve_file_paths(tree, p.parent)
    for item in overrides:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    return from_dict(tree)


#: Config keys holding a file or folder; relative values in a config file are read from the
#: file's own folder (so a recipe works from any current directory). Values given on the
#: command line stay relative to the current directory, as a shell user expects.
PATH_KEYS = (("data", "source"), ("data", "split_file"), ("data", "masks"),
             ("data", "segmenter"), ("model", "weights"))
#: Values of those keys that are words, not paths.
PATH_WORDS = frozenset({"labelme"})
#: A bare word with no such file beside the config may name a dataset (``source: ham10000``).
DATASET_WORD = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def _resolve_file_paths(tree: dict[str, Any], base: Path) -> None:
    for section, key in PATH_KEYS:
        sub = tree.get(section)
        value = sub.get(key) if isinstance(sub, dict) else None
        if not isinstance(value, str) or not value or "://" in value or value in PATH_WORDS \
                or Path(value).expanduser().is_absolute():
            continue
        if (section, key) == ("data", "source") and DATASET_WORD.fullmatch(value) \
                and not (base / value).exists():
            continue
        sub[key] = str((base / value).resolve())  # type: ignore[index]


def replace(cfg: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied (validated)."""
    tree = to_dict(cfg)
    for item in overrides:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    return from_dict(tree)


def with_values(cfg: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of ``cfg`` with dotted keys set to Python values (validated), e.g.
    ``{"optim.lr": 3e-4, "model.backbone": "resnet50"}``."""
    tree = to_dict(cfg)
    for key, value in values.items():
        _set_path(tree, key, value)
    return from_dict(tree)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (sorted sections, readable)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
