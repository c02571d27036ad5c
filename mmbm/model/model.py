"""MMBM: one shared Transformer backbone with caption, retrieval and speech (CTC) heads.

Reading order: stems (mmbm.model.stems) turn pixels, log-mel frames and token ids into
D-wide tokens; the one ``Backbone`` (mmbm.model.backbone) runs every task with a task
mask; small heads (mmbm.model.heads) read its output:

    pixels (B,3,S,S) ─ ImageStem ─► (B,N,D) ─┐
    ids    (B,L)     ─ TextStem  ─► (B,L,D) ─┼─► Backbone ─► caption logits (tied to TextStem)
    log-mel (B,M,T)  ─ AudioStem ─► (B,T',D) ┘      │      ─► encode_image / encode_text (L2-normed)
                                                    └────► CTC log-probs over audio tokens

The captioner's ``fusion`` decides how text meets the image: "attention" runs
[image | text] through the backbone under a prefix-LM mask (text attends to every
image patch); "concat" and "multiply" mix a pooled image vector into each text
embedding, then run text alone under a causal mask. All three use the same
backbone. Decoding (mmbm.decode.captions, mmbm.decode.ctc) drives ``start_caption`` and
``caption_step``; ``mmbm.model.checkpoint`` saves and loads it (it imports this
module, never the reverse). Imports no training, serving or UI code; transformers
is imported only when a pretrained stem is asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbm.config import ModelConfig
from mmbm.errors import ConfigError, TextError
from mmbm.model.backbone import (
    Backbone,
    cached_causal_mask,
    causal_mask,
    lengths_to_valid,
    padding_mask,
    prefix_lm_mask,
)
from mmbm.model.heads import CTCHead, RetrievalHead, build_fusion, mean_pool
from mmbm.model.layers import KVCache
from mmbm.model.stems import AudioStem, ImageStem, TextStem

if TYPE_CHECKING:
    from mmbm.tokenizer import Tokenizer


@dataclass(frozen=True)
class CTCOutput:
    """CTC log-probabilities over audio tokens and how many of them are real."""

    log_probs: Tensor  # (B, T', V) float32
    lengths: Tensor  # (B,) int64, T' of each clip


@dataclass(frozen=True)
class ImageTextOutput:
    """Everything the image-text losses need from one batch of (image, caption) pairs."""

    caption_logits: Tensor  # (B, L, V); position i predicts token i + 1
    image_embeds: Tensor  # (B, d_embed), L2-normalised
    text_embeds: Tensor  # (B, d_embed), L2-normalised
    logit_scale: Tensor  # 0-d, exp(logit_scale) clamped to 100


@dataclass(frozen=True)
class CaptionForward:
    """Teacher-forced caption pass; ``attention`` only when asked for ("attention" fusion)."""

    logits: Tensor  # (B, L, V)
    image_hidden: Tensor  # (B, N, D), equal to the unimodal image encoding
    attention: Tensor | None  # (B, n_layers, L, N) text-to-patch weights, head-averaged


@dataclass
class CaptionState:
    """Decoder state for a batch of images: the KV cache and the pooled image vector.

    For "attention" fusion the cache starts with the image tokens' keys/values
    (computed once); for "concat"/"multiply" it starts empty and ``pooled`` feeds
    every step.
    """

    cache: KVCache
    pooled: Tensor  # (B, D)
    n_prefix: int  # cached image tokens (N for "attention", else 0)

    @property
    def n_text(self) -> int:
        return self.cache.length - self.n_prefix

    def select(self, rows: Tensor) -> None:
        """Keep (and repeat) batch rows, e.g. the beams that survive a step."""
        self.cache.select(rows)
        self.pooled = self.pooled.index_select(0, rows)


@dataclass(frozen=True)
class StepOutput:
    logits: Tensor  # (B, T_new, V) next-token logits
    attention: Tensor | None  # (B, n_layers, T_new, N) weights over image patches, or None


class MMBM(nn.Module):
    """The multimodal model; see the module docstring for the picture."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_stem: nn.Module = ImageStem(config)
        self.audio_stem = AudioStem(config)
        self.text_stem: nn.Module = TextStem(config)
        self.backbone = Backbone(config)
        self.fusion = build_fusion(config)
        self.retrieval = RetrievalHead(config)
        self.ctc_head = CTCHead(config)
        self.caption_output: nn.Linear | None = None
        self.apply(self._init_weights)
        if config.image_encoder is not None or config.text_encoder is not None:
            self._use_pretrained_stems(config)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 style: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers).
        if isinstance(module, nn.Linear):
            std = 0.02 / (2 * self.config.n_layers) ** 0.5 if getattr(module, "is_residual_output", False) else 0.02
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.ones_(module.bias) if getattr(module, "is_fusion_gate", False) else nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, ImageStem | AudioStem | TextStem):
            nn.init.normal_(module.modality, std=0.02)
            if isinstance(module.position, nn.Parameter):
                nn.init.normal_(module.position, std=0.02)

    def _use_pretrained_stems(self, config: ModelConfig) -> None:
        from mmbm.model.pretrained import PretrainedImageStem, PretrainedTextStem  # transformers is heavy: import late

        if config.image_encoder is not None:
            self.image_stem = PretrainedImageStem(config.image_encoder, config)
        if config.text_encoder is not None:
            self.text_stem = PretrainedTextStem(config.text_encoder, config)
            # A foreign encoder has no embedding matrix of width D to tie to.
            self.caption_output = nn.Linear(config.d_model, config.vocab_size, bias=False)
            nn.init.normal_(self.caption_output.weight, std=0.02)

    @property
    def n_image_tokens(self) -> int:
        return self.image_stem.n_tokens

    @property
    def audio_frame_seconds(self) -> float:
        """Seconds between consecutive audio tokens: hop x subsampling (0.08 s by default)."""
        return self.audio_stem.seconds_per_token

    def caption_head(self, hidden: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, V) logits; the text embedding matrix serves as the output layer."""
        if self.caption_output is not None:
            return self.caption_output(hidden)
        return F.linear(hidden, self.text_stem.token.weight)  # (B, L, V)

    def text_lengths(self, ids: Tensor) -> Tensor:
        """(B, L) right-padded ids -> (B,) counts of non-pad tokens; refuses inner padding and ids outside the vocabulary.

        The one check of token values, where a whole text enters (``encode_text``,
        ``caption_forward``); ``caption_step`` feeds the decoder's own ids unchecked.
        """
        valid = ids != self.config.pad_id  # (B, L)
        lengths = valid.sum(dim=1)
        if not torch.equal(valid, lengths_to_valid(lengths, ids.shape[1])):
            raise TextError(f"token ids must be right-padded with pad_id={self.config.pad_id}")
        if int(lengths.min()) < 1:
            raise TextError("every text needs at least one non-pad token")
        low, high, V = int(ids.min()), int(ids.max()), self.config.vocab_size
        if low < 0 or high >= V:
            raise TextError(f"token ids must be in [0, {V}); got range [{low}, {high}]")
        return lengths

    # ----- image and text encoders (retrieval) -------------------------------------

    def encode_image_tokens(self, pixels: Tensor) -> Tensor:
        """Unimodal image encoding: (B, 3, S, S) -> (B, N, D) final-normed tokens."""
        return self.backbone(self.image_stem(pixels)).hidden  # no mask: every patch sees every patch

    def encode_image(self, pixels: Tensor, normalize: bool = True) -> Tensor:
        """(B, 3, S, S) normalised pixels -> (B, d_embed) image embeddings."""
        return self.retrieval.embed_image(mean_pool(self.encode_image_tokens(pixels)), normalize)

    def encode_text(self, ids: Tensor, normalize: bool = True) -> Tensor:
        """(B, L) right-padded token ids -> (B, d_embed); bidirectional, pads ignored."""
        lengths = self.text_lengths(ids)
        hidden = self.backbone(self.text_stem(ids), padding_mask(lengths, ids.shape[1])).hidden  # (B, L, D)
        pooled = mean_pool(hidden, lengths_to_valid(lengths, ids.shape[1]))  # (B, D)
        return self.retrieval.embed_text(pooled, normalize)

    # ----- captioning --------------------------------------------------------------

    def caption_forward(self, pixels: Tensor, ids: Tensor, need_weights: bool = False) -> CaptionForward:
        """Teacher-forced pass over (B, L) caption ids that start with bos."""
        if need_weights and self.fusion is not None:
            raise ConfigError(f"attention maps need fusion='attention'; this model uses {self.config.fusion!r}")
        lengths = self.text_lengths(ids)
        image = self.image_stem(pixels)  # (B, N, D)
        text = self.text_stem(ids)  # (B, L, D)
        N, L = image.shape[1], ids.shape[1]
        attention = None
        if self.fusion is None:
            out = self.backbone(torch.cat([image, text], dim=1), prefix_lm_mask(N, lengths, L), None, need_weights)
            image_hidden, text_hidden = out.hidden[:, :N], out.hidden[:, N:]  # (B, N, D), (B, L, D)
            if out.attention is not None:
                attention = out.attention[:, :, N:, :N]  # (B, n_layers, L, N)
        else:
            image_hidden = self.backbone(image).hidden  # (B, N, D)
            text = self.fusion(text, mean_pool(image_hidden))  # (B, L, D)
            text_hidden = self.backbone(text, causal_mask(lengths, L)).hidden  # (B, L, D)
        return CaptionForward(self.caption_head(text_hidden), image_hidden, attention)

    def caption_logits(self, pixels: Tensor, ids: Tensor) -> Tensor:
        """(B, 3, S, S) pixels and (B, L) ids -> (B, L, V); logits[:, i] predicts ids[:, i + 1]."""
        return self.caption_forward(pixels, ids).logits

    def forward(self, pixels: Tensor, ids: Tensor, caption_ids: Tensor | None = None) -> ImageTextOutput:
        """Image-text training pass: caption logits and both retrieval embeddings.

        The image embedding comes from the caption pass itself (its image rows are
        the unimodal encoding); the text embedding needs its own bidirectional pass.
        ``caption_ids`` (default ``ids``) are what the caption pass is teacher-forced
        on, when the captioner learns a different text than retrieval matches.
        """
        caption = self.caption_forward(pixels, ids if caption_ids is None else caption_ids)
        image_embeds = self.retrieval.embed_image(mean_pool(caption.image_hidden), normalize=True)
        return ImageTextOutput(caption.logits, image_embeds, self.encode_text(ids), self.retrieval.scale())

    def start_caption(self, pixels: Tensor) -> CaptionState:
        """Encode images once for decoding; "attention" fusion caches their keys/values."""
        cache = self.backbone.new_cache()
        image = self.image_stem(pixels)  # (B, N, D)
        if self.fusion is None:
            hidden = self.backbone(image, None, cache).hidden  # fills the cache with N image tokens
            return CaptionState(cache, mean_pool(hidden), n_prefix=image.shape[1])
        return CaptionState(cache, mean_pool(self.backbone(image).hidden), n_prefix=0)

    def caption_step(self, state: CaptionState, ids: Tensor, need_weights: bool = False) -> StepOutput:
        """Feed (B, T_new) next tokens after those in ``state``; returns their logits."""
        if need_weights and self.fusion is not None:
            raise ConfigError(f"attention maps need fusion='attention'; this model uses {self.config.fusion!r}")
        T_new, past = ids.shape[1], state.cache.length
        x = self.text_stem(ids, start=state.n_text)  # (B, T_new, D)
        if self.fusion is not None:
            x = self.fusion(x, state.pooled)
        out = self.backbone(x, cached_causal_mask(T_new, past, ids.device), state.cache, need_weights)
        attention = None if out.attention is None else out.attention[..., : state.n_prefix]  # (B, n_layers, T_new, N)
        return StepOutput(self.caption_head(out.hidden), attention)

    # ----- speech ------------------------------------------------------------------

    def ctc_logits(self, features: Tensor, feature_lengths: Tensor) -> CTCOutput:
        """(B, n_mels, T) log-mel and (B,) frame counts -> CTC log-probs (B, T/4, V)."""
        tokens, lengths = self.audio_stem(features, feature_lengths)  # (B, T', D), (B,)
        hidden = self.backbone(tokens, padding_mask(lengths, tokens.shape[1])).hidden  # (B, T', D)
        return CTCOutput(self.ctc_head(hidden), lengths)


def config_for_tokenizer(config: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """``config`` with the vocabulary size and special ids of ``tokenizer``."""
    return dataclasses.replace(
        config,
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        blank_id=tokenizer.blank_id,
    )
