"""``TrainConfig``: every setting of a training run, frozen and validated, and its CLI flags.

Owns the run settings (data, output, optimisation, mixing, precision, checkpoints,
validation, early stopping) and the mapping between them and the command line:
each field is one flag (``batch_size`` -> ``--batch-size``), generated from the
dataclass so the two cannot drift apart. The model's own shape comes from a
preset (``--preset tiny|base``) with a few override flags. Validation raises
``ConfigError`` naming the field before any work starts. Imports ``mmbm.config``,
``mmbm.device`` and ``mmbm.errors`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mmbm.config import ImageConfig, ModelConfig, require
from mmbm.device import DeviceName

Mixing = Literal["sum", "round_robin"]
Precision = Literal["auto", "fp32", "bf16"]
CaptionTarget = Literal["canonical", "sampled"]
StopMetric = Literal["combined", "caption_loss", "caption_accuracy", "retrieval_r1", "speech_cer"]
TASKS: tuple[str, ...] = ("caption", "retrieval", "speech")  # every optimizer step sees all three
# Fields that may change between an interrupted run and its --resume (they do not change the result).
RESUMABLE_FIELDS = ("resume", "progress", "max_minutes", "num_workers", "device", "compile")
# ModelConfig fields that have their own flag; the rest come from the preset.
MODEL_FLAGS = ("d_model", "n_layers", "n_heads", "d_ff", "dropout", "patch_size", "vocab_size", "fusion", "image_stem",
               "audio_subsampling")


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """One training run; see docs/training.md for what each group of settings does."""

    out: str = field(metadata=_help("output folder: best model (config, weights, tokenizer), logs, plots"))
    images: str = field(default="data/shapes", metadata=_help("ShapesWorld image corpus folder (corpus.json, "
                                                                "train/val.jsonl, images/) or a JSONL manifest"))
    speech: str = field(default="data/speech", metadata=_help("speech corpus folder (corpus.json, "
                                                                "train/val.jsonl, clips/) or a JSONL manifest"))
    images_val: str | None = field(default=None, metadata=_help("validation manifest when --images is a JSONL "
                                                                 "manifest (other corpora, via mmbm.data.adapters)"))
    speech_val: str | None = field(default=None, metadata=_help("validation manifest when --speech is a JSONL "
                                                                 "manifest"))
    model: ModelConfig = field(default_factory=ModelConfig.tiny, metadata={"cli": False})
    checkpoint_dir: str | None = field(default=None, metadata=_help("resume checkpoints (default: OUT/checkpoints)"))
    seed: int = field(default=0, metadata=_help("seeds model init, data order and augmentation"))
    max_steps: int | None = field(default=None, metadata=_help("optimizer steps; the cosine schedule spans them"))
    max_minutes: float | None = field(default=None, metadata=_help("wall-clock budget for the whole run"))
    batch_size: int = field(default=32, metadata=_help("image-text pairs per micro-step, over all processes"))
    speech_batch_size: int = field(default=16, metadata=_help("speech clips per micro-step, over all processes"))
    grad_accum: int = field(default=1, metadata=_help("micro-steps per optimizer step"))
    mixing: Mixing = field(default="sum", metadata=_help("sum: every micro-step sees every task; "
                                                           "round_robin: micro-steps take turns"))
    caption_weight: float = field(default=1.0, metadata=_help("weight of the caption cross-entropy"))
    contrastive_weight: float = field(default=1.0, metadata=_help("weight of the image-text InfoNCE loss"))
    ctc_weight: float = field(default=1.0, metadata=_help("weight of the speech CTC loss"))
    caption_target: CaptionTarget = field(default="sampled", metadata=_help(
        "what the captioner learns: canonical = the corpus' complete caption of each image where it has one "
        "(ShapesWorld), sampled = the caption drawn for retrieval"))
    label_smoothing: float = field(default=0.1, metadata=_help("caption label smoothing (arXiv:1512.00567)"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate (AdamW)"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("final LR as a fraction of the peak"))
    warmup_steps: int = field(default=100, metadata=_help("linear warmup steps before the cosine decay"))
    weight_decay: float = field(default=0.05, metadata=_help("AdamW decay on matrices (not norms/biases/embeddings)"))
    beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    beta2: float = field(default=0.98, metadata=_help("AdamW beta2"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the global gradient norm to this (0: off)"))
    precision: Precision = field(default="auto", metadata=_help("auto: bf16 autocast on CUDA, fp32 on CPU"))
    compile: bool = field(default=False, metadata=_help("torch.compile the training module"))
    device: DeviceName = field(default="auto", metadata=_help("auto: CUDA, else MPS, else CPU"))
    checkpoint_every: int = field(default=200, metadata=_help("save a resume checkpoint every N steps"))
    keep_checkpoints: int = field(default=2, metadata=_help("resume checkpoints kept (oldest deleted first)"))
    eval_every: int = field(default=200, metadata=_help("validate every N steps (and at the last step)"))
    early_stop_metric: StopMetric = field(default="combined", metadata=_help("validation metric that picks "
                                                                              "the best model"))
    patience: int = field(default=5, metadata=_help("stop after this many evaluations without improvement"))
    n_val_images: int = field(default=256, metadata=_help("val images for caption and retrieval metrics"))
    n_val_clips: int = field(default=128, metadata=_help("val clips for the CTC error rate"))
    augment: bool = field(default=True, metadata=_help("image and speech augmentation"))
    cache: bool = field(default=True, metadata=_help("keep decoded images and waveforms in memory"))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes per task"))
    resume: bool = field(default=False, metadata=_help("continue from the newest checkpoint"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))

    def __post_init__(self) -> None:
        for name in ("out", "images", "speech"):
            require(isinstance(getattr(self, name), str) and getattr(self, name) != "", name, "must be a path")
        require(isinstance(self.model, ModelConfig), "model", f"must be a ModelConfig, got {type(self.model)}")
        require(self.max_steps is not None or self.max_minutes is not None, "max_steps",
                 "give --max-steps, --max-minutes or both")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        require(self.max_minutes is None or self.max_minutes > 0, "max_minutes",
                 f"must be positive, got {self.max_minutes}")
        for name in ("batch_size", "speech_batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints",
                     "eval_every", "patience", "n_val_images", "n_val_clips"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.mixing in typing.get_args(Mixing), "mixing", f"must be sum or round_robin, got {self.mixing!r}")
        require(self.mixing != "round_robin" or self.grad_accum % len(TASKS) == 0, "grad_accum",
                 f"round_robin needs a multiple of {len(TASKS)} micro-steps so every step sees every task, "
                 f"got {self.grad_accum}")
        weights = (self.caption_weight, self.contrastive_weight, self.ctc_weight)
        require(all(w >= 0 for w in weights) and any(w > 0 for w in weights), "caption_weight",
                 f"task weights must be >= 0 and not all 0, got {weights}")
        require(self.caption_target in typing.get_args(CaptionTarget), "caption_target",
                f"must be canonical or sampled, got {self.caption_target!r}")
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            require(0.0 <= getattr(self, name) < 1.0, name, f"must be in [0, 1), got {getattr(self, name)}")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(self.precision in typing.get_args(Precision), "precision",
                 f"must be auto, fp32 or bf16, got {self.precision!r}")
        require(self.device in typing.get_args(DeviceName), "device", f"must be one of {typing.get_args(DeviceName)}, got {self.device!r}")
        require(self.early_stop_metric in typing.get_args(StopMetric), "early_stop_metric",
                 f"must be one of {typing.get_args(StopMetric)}, got {self.early_stop_metric!r}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")

    @property
    def task_weights(self) -> dict[str, float]:
        """Loss weight per task, keyed like TASKS."""
        return {"caption": self.caption_weight, "retrieval": self.contrastive_weight, "speech": self.ctc_weight}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """Fields (other than RESUMABLE_FIELDS) whose value differs from a checkpoint's saved config."""
        current = self.to_dict()
        return sorted(k for k in current if k not in RESUMABLE_FIELDS and saved.get(k) != current[k])


def _cli_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, plus --preset and the MODEL_FLAGS overrides of the model preset."""
    hints = typing.get_type_hints(TrainConfig)
    for f in _cli_fields():
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        options: dict[str, Any] = {"help": f.metadata.get("help"), "dest": f.name}
        if required:
            options["required"] = True
        else:
            options["default"] = f.default
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options["type"] = _scalar_type(kind)
        parser.add_argument(_flag(f.name), **options)
    model = parser.add_argument_group("model (overrides of the preset)")
    model.add_argument("--preset", choices=("tiny", "base"), default="tiny", help="model preset (mmbm.config)")
    model_hints = typing.get_type_hints(ModelConfig)
    for name in MODEL_FLAGS:
        kind = model_hints[name]
        if typing.get_origin(kind) is Literal:
            model.add_argument(_flag(name), dest=f"model_{name}", choices=typing.get_args(kind), default=None)
        else:
            model.add_argument(_flag(name), dest=f"model_{name}", type=_scalar_type(kind), default=None)
    model.add_argument("--image-size", dest="model_image_size", type=int, default=None, help="image side in pixels")


def _scalar_type(kind: Any) -> type:
    """int/float/str for a field typed ``X`` or ``X | None``."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind not in (int, float, str):
        raise TypeError(f"no CLI conversion for {kind}")
    return kind


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the (validated) TrainConfig from ``add_train_arguments`` flags."""
    overrides: dict[str, Any] = {name: getattr(args, f"model_{name}") for name in MODEL_FLAGS}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.model_image_size is not None:
        overrides["image"] = ImageConfig(image_size=args.model_image_size)
    model = ModelConfig.base(**overrides) if args.preset == "base" else ModelConfig.tiny(**overrides)
    values = {f.name: getattr(args, f.name) for f in _cli_fields()}
    return TrainConfig(model=model, **values)
