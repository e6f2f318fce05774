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
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dermalab.core.errors import ConfigError


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
    format: str = "auto"  # auto | folder | ham10000 | medmnist | hmnist | isic2019 | csv
    # csv: which column holds what (dermalab.data.sources.read_csv_manifest): image, label and
    # optionally group, split, skin_type (Fitzpatrick I-VI), age, sex, localization
    columns: dict[str, str] = field(default_factory=dict)
    # several datasets in one training set, each {name, source, format, columns, class_map,
    # image_dirs} mapped into one taxonomy (dermalab.data.sources.read_sources); each source is
    # split on its own, its groups kept; data.source is then unused
    sources: list[dict[str, Any]] = field(default_factory=list)
    image_dirs: list[str] = field(default_factory=list)  # HAM10000: folders holding <image_id>.jpg
    class_map: dict[str, str | None] = field(default_factory=dict)  # rename/merge; null drops
    age_impute: str = "median"  # HAM10000 missing age: median | none
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 42
    split_by: str = "group"  # group (lesion + identical files) | image (leaky; for comparisons)
    split_file: str | None = None  # an external splits.csv (sample_id -> split) to use as is
    allow_leaks: bool = False  # accept an external split whose groups cross splits (papers)
    official_split: bool = True  # MedMNIST: keep the published train/val/test split
    image_size: int | None = None  # None: the backbone's own input size
    resize_mode: str = "squash"  # squash | pad | crop: how the aspect ratio is handled
    cache: bool = True
    cache_dir: str | None = None  # default: $DERMALAB_CACHE or ~/.cache/dermalab
    skip_bad: bool = False  # list bad files in a report and go on, instead of failing
    # byte-identical images under different labels: drop (warn, leave them out) | keep (warn)
    # | error (stop)
    conflicts: str = "drop"
    # near-duplicates (re-encoded, resized, lightly cropped copies: dermalab.data.near_duplicates)
    # are grouped like identical files when both perceptual hashes are within this many bits of
    # 64; -1 turns the check off; null (auto): 8 for folders of images (no group ids), off for
    # sources whose lesion/patient ids group them already (see bench/results/near_duplicates.md)
    near_duplicates: int | None = None
    # lesion masks: a folder of <id>_segmentation.png / <id>.png / <stem>_mask.png, or
    # "labelme" (JSON beside each image); mask_labels: the Labelme labels that are lesion
    masks: str | None = None
    mask_labels: list[str] = field(default_factory=list)
    # the classifier's input (dermalab.data.lesion): raw | masked | crop | raw+masked |
    # mask_channel; all but raw need data.masks for training, and a mask or data.segmenter
    # (a `dermalab segment train` run, copied into the run) at inference
    input: str = "raw"
    crop_margin: float = 0.1  # crop: margin around the lesion's box, a share of its size
    segmenter: str | None = None
    # what kind of photo the images are: dermoscopic (through a dermatoscope) | clinical (an
    # ordinary camera/phone photo); the web service routes each upload to the model of its kind
    image_type: str = "dermoscopic"
    sampler: str = "none"  # none | oversample (class-balanced) | sqrt (balanced by sqrt count)
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
    members: int = 1


@dataclass(frozen=True)
class LossConfig:
    """Loss and class-imbalance weighting (see :mod:`dermalab.train.losses`)."""

    name: str = "ce"  # ce | weighted_ce | focal | cb | la (logit-adjusted)
    label_smoothing: float = 0.0
    gamma: float = 2.0  # focal loss focusing parameter
    beta: float = 0.999  # class-balanced effective-number parameter
    cb_type: str = "focal"  # class-balanced variant: softmax | sigmoid | focal
    tau: float = 1.0  # logit-adjusted loss: the scale of its log-prior offsets


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser."""

    name: str = "adamw"  # sgd | adam | adamw | rmsprop
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

    name: str = "cosine"  # none | step | cosine | plateau
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
    # balanced_accuracy | macro_f1 | accuracy | roc_auc_macro | loss (validation)
    monitor: str = "balanced_accuracy"
    patience: int = 6  # early stopping; 0 disables
    # Exponential moving average of the weights (timm ModelEmaV3, decay warmed up from 0):
    # validation, best.pt and everything after training use the average. 0 disables.
    ema_decay: float = 0.0
    min_delta: float = 0.0
    mixed_precision: str = "auto"  # auto (bf16/fp16 on GPU, none on CPU) | no | bf16 | fp16
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
    cam_method: str = "gradcam"  # gradcam | gradcam++
    report: bool = True  # write report.html at the end of training
    serving: bool = True  # fit the web service's "not skin" and "not sure" thresholds
    ood_target_fpr: float = 0.02  # share of genuine val images allowed to be called not-skin
    uncertain_target_accuracy: float = 0.85  # accuracy required above the "not sure" line
    # Patient metadata weighed beside the image (late fusion, dermalab.core.metadata): any of
    # age, sex, localization. Fitted on the training split, weighted on validation; [] = off.
    metadata: list[str] = field(default_factory=list)
    # Estimate each test image's skin tone from its healthy skin (Individual Typology Angle,
    # dermalab.data.skin_tone) and report the subgroups by estimated Fitzpatrick type too.
    skin_tone: bool = True
    # The served decision (dermalab.core.decision): the class prior the shown probabilities
    # and the top class assume. fit: tau in [0, 1] on validation (the highest balanced
    # accuracy among the tau whose validation accuracy reaches min_accuracy); training: the
    # training shares (tau 0); uniform: every class equally likely (tau 1).
    prior: str = "fit"
    min_accuracy: float = 0.0
    # 95% intervals: lesion-grouped bootstrap resamples of the evaluated split (0: none)
    bootstrap: int = 1000


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


_CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("auto", "folder", "ham10000", "medmnist", "hmnist", "isic2019", "csv"),
    "data.age_impute": ("median", "none"),
    "data.resize_mode": ("squash", "pad", "crop"),
    "data.image_type": ("dermoscopic", "clinical"),
    "data.input": ("raw", "masked", "crop", "raw+masked", "mask_channel"),
    "data.split_by": ("group", "image"),
    "data.conflicts": ("drop", "keep", "error"),
    "data.sampler": ("none", "oversample", "sqrt"),
    "loss.name": ("ce", "weighted_ce", "focal", "cb", "la"),
    "loss.cb_type": ("softmax", "sigmoid", "focal"),
    "optim.name": ("sgd", "adam", "adamw", "rmsprop"),
    "sched.name": ("none", "step", "cosine", "plateau"),
    "train.monitor": ("balanced_accuracy", "macro_f1", "accuracy", "roc_auc_macro", "loss"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "eval.cam_method": ("gradcam", "gradcam++"),
    "eval.prior": ("fit", "training", "uniform"),
}
#: Lower bounds of numeric keys whose meaning ends there (checked when the config is read, so a
#: bad value is one clear line before any data is touched).
_MINIMA: dict[str, float] = {"data.near_duplicates": -1, "model.members": 1, "loss.tau": 0.0,
                             "loss.gamma": 0.0, "loss.label_smoothing": 0.0,
                             "eval.min_accuracy": 0.0, "eval.bootstrap": 0}
#: The patient metadata dermalab can weigh (eval.metadata; dermalab.core.metadata encodes them).
METADATA_FIELDS = ("age", "sex", "localization")
_LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "eval.metadata": METADATA_FIELDS,
}


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


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value to the annotated field type, with a clear error."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for candidate in non_none:
            try:
                return _coerce(value, candidate, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; users mean a number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is Any:  # checked where it is read (e.g. data.sources entries)
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, validating every key and type."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        # YAML 1.1 reads unquoted on/off/yes/no/true/false keys as booleans (and 1 as a number)
        raise ConfigError(f"config key {prefix}{odd[0]!r} in section '{prefix.rstrip('.')}' is "
                          "not a name (YAML reads unquoted on/off/yes/no as true/false); quote "
                          "it or fix its spelling")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(prefix + name for name in fields)
        raise ConfigError(f"unknown config key(s) {[prefix + u for u in unknown]}; valid: {valid}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key + ".")  # type: ignore[arg-type]
            continue
        kwargs[name] = _coerce(value, tp, key)
        if key in _LIST_CHOICES:
            odd = [v for v in kwargs[name] if v not in _LIST_CHOICES[key]]
            if odd or len(set(kwargs[name])) != len(kwargs[name]):
                raise ConfigError(f"config key '{key}' takes distinct values of "
                                  f"{_LIST_CHOICES[key]}, got {value!r}")
        if key in _CHOICES and kwargs[name] not in _CHOICES[key]:
            raise ConfigError(f"config key '{key}' must be one of {_CHOICES[key]}, got {value!r}")
        if key in _MINIMA and kwargs[name] is not None and kwargs[name] < _MINIMA[key]:
            raise ConfigError(f"config key '{key}' must be >= {_MINIMA[key]:g}, got {value!r}")
    return cls(**kwargs)


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
    return typing.cast(ExperimentConfig, _build(ExperimentConfig, tree, ""))


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
