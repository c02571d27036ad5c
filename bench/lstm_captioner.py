"""The seed's captioner, reimplemented in PyTorch: a small CNN, a dense layer, an LSTM decoder.

Owns ``LSTMCaptionerConfig``, ``LSTMCaptioner`` (teacher-forced ``forward``,
greedy ``generate``), its word vocabulary and its checkpoint (config.json +
model.safetensors, written atomically, loaded without unpickling). The picture,
"init-state" style (the image sets the decoder's initial state, as in Show and
Tell, arXiv:1411.4555, rather than being merged with the LSTM's output)::

    pixels (B,3,S,S) ─ 4 x [conv3x3, BatchNorm, ReLU, maxpool2] ─ avg-pool to G x G ─► (B, C*G*G) pooled vector
        ─ dense + ReLU ─► (B, H) ─ linear + tanh ─► LSTM (h0, c0)
    words (B,L) ─ embedding ─► LSTM ─► (B, L, H) ─ linear ─► (B, L, V) next-word logits

The CNN is trained from scratch with the decoder (no pretrained weights exist
here). The pooled vector keeps a coarse G x G grid rather than one global
average, because ShapesWorld captions state left/right/above/below and a
global average would erase where things are. Words are whole words (the
ShapesWorld vocabulary has under 70), as in the seed tutorial. Imports torch,
safetensors and mmbm's image boundary and errors; never MMBM, training or UI code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmbm.config import ImageConfig
from mmbm.errors import CheckpointError, ConfigError, TextError
from mmbm.files import write_text_atomic
from mmbm.image import images_to_batch
from mmbm.tokenizer import normalize_text

SPECIAL_WORDS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_WORDS))
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_TYPE = "lstm-captioner"


@dataclass(frozen=True)
class LSTMCaptionerConfig:
    """Shape of the baseline; ``vocabulary`` is the caption words (specials are added in front)."""

    vocabulary: tuple[str, ...]
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 128)  # one conv block each; every block halves the side
    pooled_grid: int = 4  # the last feature map is average-pooled to G x G, then flattened
    d_embed: int = 256
    d_hidden: int = 448  # sized so the whole model (~2.9M) matches MMBM tiny's caption path (~2.8M)
    dropout: float = 0.2
    max_words: int = 32  # greedy decoding stops here when no <eos> came

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {message}")

        words = self.vocabulary
        require(len(words) > 0 and all(isinstance(w, str) and w and " " not in w for w in words), "vocabulary",
                "needs at least one word, each a non-empty string without spaces")
        require(len(set(words)) == len(words), "vocabulary", "has repeated words")
        require(not set(words) & set(SPECIAL_WORDS), "vocabulary", f"must not contain {SPECIAL_WORDS}")
        require(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels",
                f"need at least one positive width, got {self.channels}")
        require(self.image_size % 2 ** len(self.channels) == 0, "image_size",
                f"{self.image_size} must be divisible by 2**{len(self.channels)} (one halving per conv block)")
        require(1 <= self.pooled_grid <= self.image_size // 2 ** len(self.channels), "pooled_grid",
                f"must be in [1, {self.image_size // 2 ** len(self.channels)}], got {self.pooled_grid}")
        for name in ("d_embed", "d_hidden", "max_words"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_WORDS) + len(self.vocabulary)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **json.loads(json.dumps(dataclasses.asdict(self)))}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LSTMCaptionerConfig:
        values = dict(values)
        if values.pop("model_type", None) != MODEL_TYPE:
            raise CheckpointError(f"not an {MODEL_TYPE} config (model_type is missing or different)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"{MODEL_TYPE} config has unknown fields: {', '.join(unknown)}")
        for name in ("vocabulary", "channels"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


def build_vocabulary(captions: Iterable[str]) -> tuple[str, ...]:
    """The sorted distinct words of ``captions`` (normalised like every MMBM text)."""
    return tuple(sorted({word for caption in captions for word in normalize_text(caption).split()}))


class LSTMCaptioner(nn.Module):
    """CNN -> pooled vector -> dense -> LSTM initial state; see the module docstring."""

    def __init__(self, config: LSTMCaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.words = SPECIAL_WORDS + config.vocabulary
        self.word_ids = {word: i for i, word in enumerate(self.words)}
        blocks: list[nn.Module] = []
        width = 3
        for channels in config.channels:
            blocks += [nn.Conv2d(width, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = channels
        self.encoder = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(config.pooled_grid), nn.Flatten())
        self.dense = nn.Sequential(nn.Dropout(config.dropout),
                                   nn.Linear(width * config.pooled_grid**2, config.d_hidden), nn.ReLU())
        self.init_state = nn.Linear(config.d_hidden, 2 * config.d_hidden)
        self.embed = nn.Embedding(config.vocab_size, config.d_embed, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(config.d_embed, config.d_hidden, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.d_hidden, config.vocab_size)

    @property
    def image_config(self) -> ImageConfig:
        """Pixels are normalised exactly as MMBM's (mmbm.image), at this model's size."""
        return ImageConfig(image_size=self.config.image_size)

    def encode_text(self, text: str) -> list[int]:
        """Ids of ``<bos> words <eos>``; unknown words map to ``<unk>``; TextError when there are no words."""
        words = normalize_text(text).split()
        if not words:
            raise TextError("a caption needs at least one word")
        return [BOS_ID, *(self.word_ids.get(w, UNK_ID) for w in words), EOS_ID]

    def decode_ids(self, ids: Sequence[int]) -> str:
        """Words of ``ids`` up to the first <eos>, specials dropped."""
        words = []
        for i in ids:
            if i == EOS_ID:
                break
            if i >= len(SPECIAL_WORDS):
                words.append(self.words[i])
        return " ".join(words)

    def initial_state(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) normalised pixels -> LSTM (h0, c0), each (1, B, H)."""
        vector = self.dense(self.encoder(pixels))  # (B, H)
        h0, c0 = torch.tanh(self.init_state(vector)).chunk(2, dim=-1)  # (B, H) each
        return h0[None].contiguous(), c0[None].contiguous()

    def forward(self, pixels: Tensor, ids: Tensor) -> Tensor:
        """Teacher forcing: (B, 3, S, S) and (B, L) ids starting with <bos> -> (B, L, V); position i predicts i+1."""
        hidden, _ = self.lstm(self.dropout(self.embed(ids)), self.initial_state(pixels))  # (B, L, H)
        return self.output(self.dropout(hidden))

    @torch.inference_mode()
    def generate(self, pixels: Tensor) -> list[str]:
        """Greedy captions of (B, 3, S, S) pixels, at most ``max_words`` words each."""
        state = self.initial_state(pixels)
        token = torch.full((pixels.shape[0], 1), BOS_ID, dtype=torch.long, device=pixels.device)  # (B, 1)
        steps, done = [], torch.zeros(pixels.shape[0], dtype=torch.bool, device=pixels.device)
        for _ in range(self.config.max_words + 1):
            hidden, state = self.lstm(self.embed(token), state)  # (B, 1, H)
            token = self.output(hidden).argmax(dim=-1)  # (B, 1)
            steps.append(token)
            done |= token[:, 0] == EOS_ID
            if bool(done.all()):
                break
        rows = torch.cat(steps, dim=1).tolist()  # (B, n_steps)
        return [self.decode_ids(row) for row in rows]

    def caption_images(self, images: Sequence[Image.Image]) -> list[str]:
        """Greedy captions of RGB images (see mmbm.image.load_image), in eval mode."""
        device = next(self.parameters()).device
        return self.generate(images_to_batch(images, self.image_config).to(device))


def caption_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Token-mean cross-entropy of (B, L, V) logits against the next ids of (B, L), pads ignored."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=PAD_ID)


def pad_captions(rows: Sequence[Sequence[int]]) -> Tensor:
    """Right-pad id lists with <pad> into (B, L_max) int64."""
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [PAD_ID] * (width - len(row)) for row in rows], dtype=torch.long)


def save_lstm_captioner(model: LSTMCaptioner, directory: str | os.PathLike[str]) -> Path:
    """Write config.json and model.safetensors into ``directory``, each via a temporary file and a rename."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_NAME}.")
    os.close(handle)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, temporary)
    os.replace(temporary, folder / WEIGHTS_NAME)
    write_text_atomic(folder / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=1) + "\n")
    return folder


def load_lstm_captioner(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> LSTMCaptioner:
    """Load a checkpoint written by ``save_lstm_captioner`` (eval mode); CheckpointError when it is not one."""
    folder = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"LSTM captioner checkpoint is missing {name}: {folder / name}")
    try:
        config = LSTMCaptionerConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
        model = LSTMCaptioner(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except (OSError, ValueError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"cannot load the LSTM captioner in {str(folder)!r}: {e}") from e
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
