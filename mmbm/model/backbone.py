"""The shared backbone: one stack of pre-norm Transformer blocks, and its attention masks.

Every task runs through the same ``Backbone``; only the mask changes:
- ``padding_mask``: bidirectional attention over one modality (image, audio, or text
  for retrieval), with padded keys hidden;
- ``causal_mask``: text that sees only earlier text (the concat/multiply captioners);
- ``cached_causal_mask``: new text tokens fed after cached ones (decoding with a
  KV cache): each sees the cache and the new tokens up to itself;
- ``prefix_lm_mask``: [image | text] in one sequence (the "attention" captioner,
  arXiv:1910.10683 §3.2.1): image tokens attend bidirectionally among themselves
  only, text tokens attend to every image token and causally to text. Image rows
  never see text, so their outputs equal the unimodal image encoding — one forward
  serves captioning and image retrieval, and the image keys/values can be cached
  once for decoding.
Masks are boolean, True where a query may attend a key, shaped (B, 1, T_query,
T_key); every mask the model uses is built here. Imports ``config`` and
``layers`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmbm.config import ModelConfig
from mmbm.model.layers import Block, KVCache


@dataclass(frozen=True)
class BackboneOutput:
    """Final-normed hidden states and, when requested, attention weights per layer."""

    hidden: Tensor  # (B, T, D)
    attention: Tensor | None  # (B, n_layers, T, S), averaged over heads; None unless asked for


class Backbone(nn.Module):
    """``n_layers`` pre-norm blocks and a final LayerNorm, shared by all three tasks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_final = nn.LayerNorm(config.d_model)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> BackboneOutput:
        """x (B, T, D) tokens -> hidden (B, T, D); with ``cache`` the T tokens follow the cached ones."""
        maps = []
        for layer, block in enumerate(self.blocks):
            x, weights = block(x, mask, cache, layer, need_weights)
            maps.append(weights)
        attention = torch.stack(maps, dim=1) if need_weights else None  # (B, n_layers, T, S)
        return BackboneOutput(hidden=self.ln_final(x), attention=attention)


def lengths_to_valid(lengths: Tensor, max_length: int) -> Tensor:
    """(B,) lengths -> (B, max_length) bool, True at real (non-pad) positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def padding_mask(lengths: Tensor, max_length: int) -> Tensor:
    """Bidirectional mask (B, 1, 1, T): every query sees every real key."""
    return lengths_to_valid(lengths, max_length)[:, None, None, :]


def causal_mask(lengths: Tensor, max_length: int) -> Tensor:
    """Causal mask (B, 1, T, T): query i sees real keys j <= i."""
    causal = torch.ones(max_length, max_length, dtype=torch.bool, device=lengths.device).tril()  # (T, T)
    return causal[None, None] & padding_mask(lengths, max_length)  # (B, 1, T, T)


def cached_causal_mask(n_new: int, n_cached: int, device: torch.device) -> Tensor | None:
    """Mask (1, 1, T_new, n_cached + T_new) for ``n_new`` tokens fed after ``n_cached`` cached ones.

    None for a single new token, which may see everything cached.
    """
    if n_new <= 1:
        return None
    return torch.ones(n_new, n_cached + n_new, dtype=torch.bool, device=device).tril(diagonal=n_cached)[None, None]


def prefix_lm_mask(n_prefix: int, text_lengths: Tensor, max_text_length: int) -> Tensor:
    """Prefix-LM mask (B, 1, N+L, N+L) over [image (N) | text (L)].

    Image queries see image keys only; text queries see all image keys, earlier
    text keys and themselves; padded text keys are hidden from everyone.
    """
    N, L = n_prefix, max_text_length
    device = text_lengths.device
    allowed = torch.zeros(N + L, N + L, dtype=torch.bool, device=device)
    allowed[:, :N] = True  # everyone sees the image
    allowed[N:, N:] = torch.ones(L, L, dtype=torch.bool, device=device).tril()  # text is causal
    key_valid = torch.cat(
        [torch.ones(len(text_lengths), N, dtype=torch.bool, device=device), lengths_to_valid(text_lengths, L)], dim=1
    )  # (B, N+L)
    return allowed[None, None] & key_valid[:, None, None, :]  # (B, 1, N+L, N+L)
