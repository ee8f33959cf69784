"""Experiment configuration: a YAML file checked by a typed schema, so a typo fails before hours of training.

``load_config(path, overrides)`` reads YAML, applies ``--set a.b=value`` overrides, validates every key and
type (unknown keys get a "did you mean" hint) and checks that user paths exist. ``resolved_config`` adds the
provenance (versions, git hash) saved beside every run; ``result_diff`` tells whether a saved config and a new
one would give different results.
"""

from __future__ import annotations

import copy
import difflib
import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

import medsg.models  # noqa: F401 (registers the SG-Former variants)
from medsg.core.errors import ConfigError, InputSizeError
from medsg.core.provenance import provenance
from medsg.core.run_folder import ALL, RunFolder
from medsg.data.audit import MIN_CORRELATION, NEAR_DUP_THRESHOLD
from medsg.data.dicom import check_keyword, grouping_keyword
from medsg.data.manifest import adapter_names
from medsg.data.splits import split_filename
from medsg.data.transforms import aug_defaults, resolve_augmentations
from medsg.models.sgformer import check_img_size

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = 1000  # bootstrap resamples of the report's CIs (also for a saved config without the key)

# Keys that do not change results: a resumed run may differ in these.
NON_RESULT_KEYS = frozenset(
    {
        "provenance",
        "experiment.output_dir",
        "experiment.report_dir",
        "data.cache",
        "data.cache_dir",
        "data.synthetic",  # a label for the report; the images decide the results
        # each sample's augmentation draws from its own seed (train.loader.SeededAugmentation); a worker's
        # single-threaded transforms differ only in float rounding, like another thread count
        "train.workers",
        "eval",  # what the report computes from the predictions (bootstrap, operating points, subgroups)
        "explain",  # explanations are computed after training and never change its results
    }
)


_NON_RESULT_PREFIXES = tuple(k + "." for k in NON_RESULT_KEYS)
# keys under a NON_RESULT_KEYS prefix that still change results: test-time augmentation changes the predictions
RESULT_KEYS_INSIDE = frozenset({"eval.tta"})

# added keys that leave config_hash as it was while they hold their default (reports keep their hash)
HASH_NEUTRAL_DEFAULTS = {
    "train.trainer": "medsg.train.fold.FoldTrainer",
    "train.mask_loss_weight": 0.0,
    "train.distill_teachers": [],
    "train.distill_weight": 0.5,
    "train.distill_temperature": 2.0,
    "eval.tta": False,
}
# Keys added to the schema after runs were saved: a saved config.yaml without one is read with the value the
# older code used implicitly, so resuming such a run is not refused for a key it never had.
ADDED_KEYS = {
    "data.audit.min_correlation": MIN_CORRELATION,
    "data.synthetic": False,
    "train.amp_dtype": "auto",  # the GPU-path switches came later; earlier runs used these values
    "train.channels_last": False,
    "train.compile": False,
    **HASH_NEUTRAL_DEFAULTS,
}
DEFAULT_TRAINER = HASH_NEUTRAL_DEFAULTS["train.trainer"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SEED = Field(0, ge=0, lt=2**32)  # what numpy, torch and the bootstrap all accept


class ExperimentConfig(_Strict):
    name: str
    seed: int = SEED
    output_dir: str = "runs"
    report_dir: str | None = None  # default: reports/<name> relative to the working directory

    @field_validator("name")
    @classmethod
    def _stays_inside_its_folders(cls, value: str) -> str:
        """The name is a folder under output_dir and reports/: '' or '.' would write into them, an absolute
        path or '..' outside them."""
        name = PurePosixPath(value.replace("\\", "/"))
        if value.strip() in ("", ".") or name.is_absolute() or ".." in name.parts or "\x00" in value:
            raise ValueError(
                f"{value!r} would put the run outside its own folder under output_dir; use a plain name "
                "(letters, digits, '_', '-', '.')"
            )
        return value


class AuditConfig(_Strict):
    """``medsg.data.audit.audit_manifest`` settings; the defaults are the audit module's own constants."""

    conflicts: Literal["drop", "keep"] = "drop"
    near_dup_threshold: int = Field(NEAR_DUP_THRESHOLD, ge=0, le=256)  # dHash-256 Hamming distance
    min_correlation: float = Field(MIN_CORRELATION, ge=-1.0, le=1.0)  # thumbnail Pearson correlation


class AugmentConfig(_Strict):
    """Training augmentations (``medsg.data.transforms.Augmentations``); a probability of 0 drops the step.
    The defaults are the recipe every run so far used."""

    horizontal_flip: float = Field(0.5, ge=0.0, le=1.0)
    vertical_flip: float | None = Field(
        None, ge=0.0, le=1.0
    )  # null: 0.5, or 0 for ultrasound (skin line on top)
    rotate_degrees: float = Field(15.0, ge=0.0, le=180.0)
    rotate_prob: float = Field(0.5, ge=0.0, le=1.0)
    zoom_min: float = Field(0.9, gt=0.0)
    zoom_max: float = Field(1.15, gt=0.0)
    zoom_prob: float = Field(0.5, ge=0.0, le=1.0)
    contrast_gamma_min: float = Field(0.8, gt=0.0)
    contrast_gamma_max: float = Field(1.25, gt=0.0)
    contrast_prob: float = Field(0.3, ge=0.0, le=1.0)
    noise_std: float = Field(0.02, ge=0.0)
    noise_prob: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ranges_in_order(self) -> AugmentConfig:
        if self.zoom_min > self.zoom_max or self.contrast_gamma_min > self.contrast_gamma_max:
            raise ValueError("zoom_min must be <= zoom_max and contrast_gamma_min <= contrast_gamma_max")
        return self


# data.augment came later, with the values every earlier run used (vertical_flip: the dataset's default)
ADDED_KEYS.update({f"data.augment.{key}": value for key, value in AugmentConfig().model_dump().items()})


class DataConfig(_Strict):
    """Where the images are, how they are audited, and how decoded images are cached.

    ``cache``: each image is decoded and resized once per run and shared by all folds (``RunDecodes`` in
    ``medsg.train.decoded``); folds only augment and normalise. ``memory`` (default) keeps that cache in RAM
    (~600 KB per 224 px image; rebuilt once when a run is resumed); ``disk`` writes it to ``cache_dir``
    (default ``<run_dir>/cache``, keyed by record and transform), so it also survives kill -9 and resume;
    ``none`` decodes every epoch. Why memory by default: one decode per run costs seconds to minutes next to
    hours of training, and RAM needs no clean-up; choose disk for data sets larger than RAM.
    """

    adapter: str  # a name of medsg.data.manifest's adapter registry (checked below)
    root: str
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments of the adapter
    audit: AuditConfig = Field(default_factory=AuditConfig)
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None  # for cache: disk; default <run_dir>/cache
    color_aug: bool | None = None
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig())
    synthetic: bool = False  # generated data (medsg demo): the report says so at its top

    @field_validator("options")
    @classmethod
    def _options_are_not_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        """data.root and data.adapter are settings of their own, passed to the adapter already."""
        taken = sorted({"root", "adapter"} & set(value))
        if taken:
            raise ValueError(f"{taken} cannot be adapter options; set data.{taken[0]} instead")
        return value

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        """One list of adapters: the registry that ``load_manifest`` dispatches on."""
        names = adapter_names()
        if value not in names:
            match = difflib.get_close_matches(value, names, n=1)
            hint = f" - did you mean {match[0]}?" if match else ""
            raise ValueError(f"unknown dataset adapter; expected one of {names}{hint}")
        return value


class SplitsConfig(_Strict):
    k: int = Field(5, ge=2)
    seed: int = SEED
    # a manifest column ("group", a CSV column such as "patient_id"), or a DICOM header element read from
    # every file, e.g. "dicom:PatientID" or "dicom:StudyInstanceUID" (stored only as a salted hash)
    grouping: str = "group"
    file: str | None = None  # default data_splits/<adapter>_<k>fold_seed<seed>.json
    inner_val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    allow_subset: bool = False  # a split file over more ids than the data (e.g. local ISIC subset)

    @field_validator("grouping")
    @classmethod
    def _known_dicom_keyword(cls, value: str) -> str:
        """``dicom:<Keyword>`` must name a DICOM element that can hold an id, checked before any data is read."""
        keyword = grouping_keyword(value)
        if keyword is not None:
            check_keyword(keyword)
        return value


class ModelConfig(_Strict):
    name: str
    pretrained: str | None = None
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    img_size: int = Field(224, gt=0)

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        """The model name must be in timm's registry (after ``import medsg``, which adds SG-Former) and an
        SG-Former must get a size it can serve: both failed only at model build, after the whole audit."""
        import timm

        if not timm.is_model(self.name):
            match = difflib.get_close_matches(self.name, timm.list_models(), n=1)
            hint = f" - did you mean {match[0]}?" if match else ""
            raise ValueError(
                f"model.name {self.name!r} is not a timm model{hint}; see timm.list_models() "
                "(SG-Former: sgformer_tiny, sgformer_xs, sgformer_s, sgformer_m, sgformer_b)"
            )
        if self.name.startswith("sgformer"):
            try:
                check_img_size(self.img_size)
            except InputSizeError as exc:
                raise ValueError(f"model.img_size: {exc}") from None
        return self


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: str = "adamw"
    lr: float = Field(5e-4, gt=0)
    layer_decay: float | None = Field(0.75, gt=0, le=1)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    sched: Literal["cosine", "step", "multistep", "poly", "tanh"] = "cosine"
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    amp: bool = True
    # the mixed-precision dtype: auto = bfloat16 where the GPU has it, else float16 with a GradScaler, and fp32 on
    # CPU; naming one also turns autocast on for CPU (bfloat16 is the useful one there)
    amp_dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    channels_last: bool = False  # NHWC memory format for the convolutions (stem, downsampling, depthwise)
    compile: bool = False  # torch.compile (inductor) the training model; the first steps pay the compilation
    grad_clip: float | None = Field(None, gt=0)
    class_weighting: Literal["none", "balanced"] = "none"
    sampler: Literal["none", "balanced"] = "none"
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # > 0: add an auxiliary lesion-mask loss of this weight (medsg.train.mask_aux); needs masks (BUSI)
    mask_loss_weight: float = Field(0.0, ge=0)
    # knowledge distillation (medsg.train.distill): run folders or packages of the same task and split file whose
    # fold K models teach fold K (the final models teach --fold all); the loss becomes (1 - w) x the loss above
    # + w x T^2 x KL(teachers' mean softmax at T || student's softmax at T)
    distill_teachers: list[str] = Field(default_factory=list)
    distill_weight: float = Field(HASH_NEUTRAL_DEFAULTS["train.distill_weight"], gt=0, le=1)
    distill_temperature: float = Field(HASH_NEUTRAL_DEFAULTS["train.distill_temperature"], gt=0)
    early_stop_patience: int | None = Field(None, ge=1)
    selection: Literal["inner_val", "last_epoch"] = "inner_val"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the FoldTrainer subclass that runs each fold (dotted path): a recipe changed by hooks, not by edits
    trainer: str = DEFAULT_TRAINER
    workers: int = Field(2, ge=0)
    deterministic: bool = True

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        """Checked like ``sched``: a name timm's ``create_optimizer_v2`` knows, before any data is read."""
        from timm.optim import list_optimizers

        names = list_optimizers()
        if value.lower() not in names:
            match = difflib.get_close_matches(value.lower(), names, n=1)
            hint = f" - did you mean {match[0]}?" if match else ""
            raise ValueError(f"unknown optimizer{hint}; see timm.optim.list_optimizers()")
        return value

    @model_validator(mode="after")
    def _distill_settings_need_teachers(self) -> TrainConfig:
        """A distillation weight or temperature without teachers would be ignored yet change the config's hash."""
        defaults = (
            HASH_NEUTRAL_DEFAULTS["train.distill_weight"],
            HASH_NEUTRAL_DEFAULTS["train.distill_temperature"],
        )
        if not self.distill_teachers and (self.distill_weight, self.distill_temperature) != defaults:
            raise ValueError(
                "train.distill_weight / distill_temperature are set but train.distill_teachers is empty; name the "
                "teachers (run folders or packages) or leave both at their defaults (0.5, 2.0)"
            )
        return self

    @model_validator(mode="after")
    def _warmup_shorter_than_run(self) -> TrainConfig:
        """Warn: with warmup_epochs >= epochs the cosine never starts and the whole run trains at warm-up lr.

        A warning, not an error: quick smoke runs (``--set train.epochs=1``) keep the default warm-up on
        purpose, and refusing them would change no result, only annoy.
        """
        if self.warmup_epochs >= self.epochs:
            log.warning(
                "train.warmup_epochs (%d) >= train.epochs (%d): the whole run trains at the warm-up learning "
                "rate and the %s schedule never starts; set train.warmup_epochs below train.epochs",
                self.warmup_epochs,
                self.epochs,
                self.sched,
            )
        return self


class EvalConfig(_Strict):
    """What the report computes from the predictions; none of it changes training (all non-result keys)."""

    bootstrap: int = Field(DEFAULT_BOOTSTRAP, ge=0)
    # what the headline argmax means (medsg.calibration): "balanced", the model's class-balanced argmax (a
    # uniform prior), "prior", after each model's prior shift fitted on its inner validation split (the
    # training prior: accuracy), or "majority_floor", the partial shift with the best validation balanced
    # accuracy that keeps accuracy at the majority class's share. The report shows every rule; predict and
    # evaluate use this one.
    decision: Literal["balanced", "prior", "majority_floor"] = "balanced"
    # the clinically critical class for operating points (one against the rest); null: the dataset's default
    # (BUSI malignant, ISIC MEL, none for other datasets)
    critical_class: str | None = None
    # test-time augmentation: the selected model's probabilities are the mean of its softmax over the image and
    # its horizontal flip, for the inner validation split (temperature, prior shift, operating points) and the test
    # fold; epoch selection stays on single views. Packages carry it into predict and evaluate. Unlike the rest of
    # ``eval`` it changes the predictions, so a run cannot resume with it changed.
    tta: bool = False
    fixed_specificity: float = Field(0.90, gt=0.0, lt=1.0)  # report sensitivity at this specificity
    fixed_sensitivity: float = Field(0.90, gt=0.0, lt=1.0)  # and specificity at this sensitivity
    # manifest columns to break results down by (null: those of age, sex, localization, site the data have)
    subgroups: list[str] | None = None
    min_subgroup_size: int = Field(30, ge=1)  # smaller subgroups are flagged as too small to say anything


class ExplainConfig(_Strict):
    """Explanations of each fold's test cases (``medsg.explain``), made after its test prediction."""

    cases_per_fold: int = Field(8, ge=0)  # review cases per fold: a panel, raw maps and a card on review.html
    localization: bool = True  # score every test image that has a lesion mask (pointing, energy, IoU)
    # deletion-AUC steps for those images (0: off). Each step is a forward pass per map type (~200 per image
    # at 20 steps), so runs leave it off and `medsg explain RUN_DIR` computes it (20 steps by default).
    deletion_steps: int = Field(0, ge=0)


OUTER_TEST_UNUSED = "the outer test fold is never used for selection"  # said beside every selection rule
TTA_TEXT = (  # eval.tta in words, for the report's protocol and the model card
    "the selected model's probabilities (inner validation, which fits the calibration, and the test fold) are the "
    "mean of its softmax over the image and its horizontal flip; epochs were selected on single views"
)


class Config(_Strict):
    experiment: ExperimentConfig
    data: DataConfig
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    # data.root as the user wrote it: config.yaml stores this, not an absolute path of one machine
    _root_as_given: str | None = PrivateAttr(default=None)
    _pretrained_as_given: str | None = PrivateAttr(default=None)  # likewise model.pretrained
    _provenance: dict[str, Any] = PrivateAttr(default_factory=dict)  # where a saved config.yaml was made

    @property
    def selection_rule(self) -> str:
        """Which epoch's weights a fold keeps, in words: stored in each fold's metrics.json and quoted by the
        report, from this one place so the two cannot drift apart."""
        train, frac = self.train, self.splits.inner_val_fraction
        if train.selection == "last_epoch":
            return f"fixed schedule: weights after the last epoch ({train.epochs})" + (
                " (EMA)" if train.ema else ""
            )
        return (
            f"best inner-validation balanced accuracy (tie-break: lower val loss) on a grouped, stratified "
            f"{frac:.0%} split of the training folds" + (", EMA weights" if train.ema else "")
        )

    @property
    def root_as_given(self) -> str:
        """``data.root`` as the config file wrote it (relative paths stay relative), for reports."""
        return self._root_as_given or self.data.root

    @property
    def pretrained_as_given(self) -> str | None:
        """``model.pretrained`` as written; None or "" (both mean from scratch) become None."""
        return self._pretrained_as_given or self.model.pretrained or None

    @property
    def saved_provenance(self) -> dict[str, Any]:
        """The provenance recorded in the config.yaml this config was loaded from ({} for a new config)."""
        return self._provenance

    # Derived values, so every module reads the same defaults.
    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>``: the run folder."""
        return Path(self.experiment.output_dir) / self.experiment.name

    @property
    def report_dir(self) -> Path:
        """``experiment.report_dir``, or ``reports/<name>`` relative to the working directory."""
        return Path(self.experiment.report_dir or Path("reports") / self.experiment.name)

    @property
    def split_file(self) -> Path:
        """``splits.file``, or ``data_splits/<adapter>_<k>fold_seed<seed>.json`` relative to the working dir."""
        default = Path("data_splits") / split_filename(self.data.adapter, self.splits.k, self.splits.seed)
        return Path(self.splits.file or default)

    @property
    def augmentations(self) -> Any:
        """``data.augment`` as ``medsg.data.transforms.Augmentations``, the dataset's vertical-flip default filled."""
        return resolve_augmentations(self.data.augment.model_dump(), self.data.adapter)

    @property
    def color_aug(self) -> bool:
        """None means the dataset's default: off for grey-scale ultrasound, on for dermoscopy / endoscopy."""
        if self.data.color_aug is not None:
            return self.data.color_aug

        return aug_defaults(self.data.adapter)["color_aug"]


# ---------------------------------------------------------------- key paths and suggestions


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts (sections and leaves)."""
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys.extend(_schema_keys(sub, dotted + "."))
    return keys


def _suggest(key: str) -> str:
    """' - did you mean x?' for a near miss among the schema's keys, else ''."""
    keys = _schema_keys(Config)
    parent = key.rpartition(".")[0]
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    match = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, keys, n=1, cutoff=0.75
    )
    return f" - did you mean {match[0]}?" if match else ""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {key}{_suggest(key)}")
        elif item["type"] == "missing":
            lines.append(f"missing key {key}")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(lines)


# ---------------------------------------------------------------- loading


def parse_key_value(item: str, what: str, form: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set`` and ``--option``: the stripped key and the value parsed as YAML, so numbers,
    booleans and null keep their type (an empty value is None). ``what`` and ``form`` name the flag in errors."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{what} {item!r} must look like {form}")
    try:
        return key, yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {key}: cannot parse value {text!r} as YAML ({exc})") from exc


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a raw config dict; return a new dict."""
    out = copy.deepcopy(raw)
    valid = set(_schema_keys(Config))
    for item in overrides or []:
        key, value = parse_key_value(item, "override", "section.key=value, e.g. train.epochs=3")
        if key not in valid and not key.startswith("data.options."):
            raise ConfigError(f"unknown key {key} in --set {item}{_suggest(key)}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path} cannot be read ({exc}); save it as UTF-8 text you can read"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (experiment, data, model, ...)")
    return raw


BASE_KEY = "base"  # a config may name a base YAML (relative to itself) and override keys of it


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: sections merge key by key, any other value (null included) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def compose_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw config of ``path`` with its ``base:`` chain merged in (as Hydra's defaults do).

    ``base`` is a path relative to the file that names it, so an experiment can hold only its differences
    from another (``busi_cpu.yaml`` from ``busi.yaml``) and the two cannot drift apart.
    """
    path = Path(path)
    raw = read_yaml(path)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {BASE_KEY} must be the path of a YAML file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve(), base_path))
        raise ConfigError(f"{path}: {BASE_KEY} files form a loop ({chain}); remove one {BASE_KEY}: line")
    if not base_path.is_file():
        raise ConfigError(f"{path}: {BASE_KEY} file not found: {base_path} (the path is relative to {path})")
    return deep_merge(compose_yaml(base_path, (*_seen, path.resolve())), raw)


def config_from_dict(
    raw: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>", check_paths: bool = True
) -> Config:
    """Validate a raw dict (plus overrides) into a ``Config``; paths become absolute."""
    raw = apply_overrides(raw, overrides)
    raw.pop("provenance", None)  # a saved config.yaml can be loaded back
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    cfg._root_as_given = cfg.data.root
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.model.pretrained:
        cfg._pretrained_as_given = cfg.model.pretrained
        cfg.model.pretrained = str(Path(cfg.model.pretrained).expanduser().resolve())
    if check_paths:
        check_config_paths(cfg)
    return cfg


def load_saved_config(folder: str | Path, required: bool = True) -> Config | None:
    """The config a run folder, report folder or package was made with (its ``config.yaml``), typed.

    Paths are not checked (the data may lie on another machine); the recorded provenance stays readable as
    ``cfg.saved_provenance``. An absent file is an error naming the folder, or None when not ``required``.
    """
    path = RunFolder(Path(folder)).config
    if not path.is_file():
        if not required:
            return None
        raise ConfigError(
            f"{path} not found: is {folder} a medsg run folder (<output_dir>/<name>) or report folder?"
        )
    raw = read_yaml(path)
    provenance = raw.get("provenance")
    cfg = config_from_dict(raw, source=str(path), check_paths=False)
    cfg._provenance = provenance if isinstance(provenance, dict) else {}
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True) -> Config:
    """Read (with its ``base:`` chain), override and validate a YAML config file."""
    return config_from_dict(compose_yaml(path), overrides, source=str(path), check_paths=check_paths)


FOLD_PLACEHOLDER = "{fold}"


def pretrained_for_fold(pretrained: str | None, fold: int | str | None) -> str | None:
    """``model.pretrained`` for one fold. A path holding ``{fold}`` names one backbone per fold, each pretrained
    on that fold's training images only (``medsg pretrain --split FILE --fold K``), so no fold starts from
    weights that saw its outer test images; the final model (fold ``all``) takes ``--fold all``'s."""
    if not pretrained or FOLD_PLACEHOLDER not in pretrained:
        return pretrained
    if fold is None:
        raise ConfigError(
            f"model.pretrained: {pretrained} names one backbone per fold ({FOLD_PLACEHOLDER}), and this "
            "command builds a model outside any fold; name one weights file instead"
        )
    return pretrained.replace(FOLD_PLACEHOLDER, str(fold))


def pretrained_sources(cfg: Config, folds: Iterable[int | str]) -> dict[str, int | str]:
    """The distinct weights files or folders ``model.pretrained`` names for ``folds`` (one per fold with
    ``{fold}``, else one), each with the first of ``folds`` that starts from it; empty from scratch."""
    sources: dict[str, int | str] = {}
    for fold in folds:
        source = pretrained_for_fold(cfg.model.pretrained, fold)
        if source:
            sources.setdefault(source, fold)
    return sources


def check_config_paths(cfg: Config) -> None:
    """User paths must exist: data.root and, when set, model.pretrained."""
    if not Path(cfg.data.root).exists():
        raise ConfigError(
            f"data.root: folder not found: {cfg.data.root} (set data.root or --set data.root=DIR)"
        )
    if cfg.model.pretrained and FOLD_PLACEHOLDER in cfg.model.pretrained:
        # a typo fails here; a fold whose backbone is not made yet fails when a run asks for that fold
        folds: list[int | str] = [*range(cfg.splits.k), ALL]
        paths = [str(pretrained_for_fold(cfg.model.pretrained, fold)) for fold in folds]
        if not any(Path(path).exists() for path in paths):
            raise ConfigError(
                f"model.pretrained: no fold's backbone found (fold 0's would be {paths[0]}). Pretrain one per "
                "fold on that fold's training images (`medsg pretrain --adapter ADAPTER --root ROOT --split "
                "SPLIT_FILE --fold K --out ...`), or name one weights file for every fold."
            )
    elif cfg.model.pretrained and not Path(cfg.model.pretrained).exists():
        raise ConfigError(
            f"model.pretrained: weights file or model folder not found: {cfg.model.pretrained}. Name the released {cfg.model.name} ImageNet "
            "weights (see README, 'Pretrained weights'), a `medsg pretrain` checkpoint, or a medsg run folder or "
            "package to transfer from; or set model.pretrained: null to train from scratch."
        )
    for i, teacher in enumerate(cfg.train.distill_teachers):
        if not Path(teacher).expanduser().is_dir():
            raise ConfigError(
                f"train.distill_teachers[{i}]: model folder not found: {teacher}. Name a medsg run folder "
                "(<output_dir>/<name>) or an exported package of the same task and split file; train or export "
                "it first, or remove it from the list."
            )


# ---------------------------------------------------------------- saved configs and comparison


def resolved_config(cfg: Config) -> dict[str, Any]:
    """The full config with defaults filled in, derived paths and provenance: what ``config.yaml`` holds."""
    data = cfg.model_dump(mode="json")
    data["data"]["root"] = cfg._root_as_given or cfg.data.root
    data["model"]["pretrained"] = cfg._pretrained_as_given or cfg.model.pretrained
    data["experiment"]["report_dir"] = str(cfg.report_dir)
    data["splits"]["file"] = str(cfg.split_file)
    data["data"]["color_aug"] = cfg.color_aug
    data["provenance"] = provenance(cfg.train.device)
    return data


def dump_config(data: dict[str, Any]) -> str:
    """YAML text of a config dict, keys in schema order (as ``config.yaml`` stores it)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _same_value(key: str, a: Any, b: Any) -> bool:
    """Equal for resuming: data.root, model.pretrained and the teachers compare as the folders they name
    (config.yaml keeps them as given, and runs saved before that keep an absolute path)."""
    if key in ("data.root", "model.pretrained") and isinstance(a, str) and isinstance(b, str):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    if key == "train.distill_teachers" and isinstance(a, list) and isinstance(b, list):
        return [Path(str(p)).expanduser().resolve() for p in a] == [
            Path(str(p)).expanduser().resolve() for p in b
        ]
    return a == b


def result_diff(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ in a way that changes results (provenance and I/O knobs ignored)."""
    a, b = {**ADDED_KEYS, **_flatten(saved)}, _flatten(new)
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in keys
        if _changes_results(k) and not _same_value(k, a.get(k), b.get(k))
    ]


def _changes_results(key: str) -> bool:
    """Whether a dotted key is a result key: not in (or under) ``NON_RESULT_KEYS``, or in ``RESULT_KEYS_INSIDE``."""
    return key in RESULT_KEYS_INSIDE or (
        key not in NON_RESULT_KEYS and not key.startswith(_NON_RESULT_PREFIXES)
    )


def config_hash(saved: dict[str, Any]) -> str:
    """sha256 of the keys that change results (not provenance, I/O knobs or where the data lie), so a
    report can name the config that made it and a later report can tell whether it is the same run."""
    import hashlib
    import json

    flat = {**ADDED_KEYS, **_flatten(saved)}
    kept = {
        k: v
        for k, v in flat.items()
        if _changes_results(k)
        and k != "data.root"
        and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
