"""Transformer building blocks: self-attention, MLP, the pre-norm block and the KV cache.

Owns the attention arithmetic (``torch.nn.functional.scaled_dot_product_attention``,
the seed's softmax(QKᵀ/√d_k)V, arXiv:1706.03762), the per-layer key/value cache
used for incremental decoding, and the fixed sinusoidal position table. Masks are
boolean, broadcastable to (B, n_heads, T_query, T_key), True where a query may
attend to a key (the convention of ``scaled_dot_product_attention``); they are
built in ``mmbm.model.backbone``. Imports nothing from the package but ``config``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbm.config import ModelConfig


class KVCache:
    """Keys and values of every token seen so far, one (B, nh, T, hs) pair per layer.

    Incremental decoding appends the new tokens' keys and values at each layer, so a
    step costs O(T) instead of recomputing the whole prefix. ``select`` reorders or
    repeats batch rows (beam search keeps the cache rows of the surviving beams).
    """

    def __init__(self, n_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of cached tokens (0 when empty)."""
        first = self.keys[0]
        return 0 if first is None else first.shape[2]

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add (B, nh, T_new, hs) keys/values at ``layer``; return all of them (B, nh, T, hs)."""
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is not None and past_v is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def select(self, rows: Tensor) -> None:
        """Keep batch rows ``rows`` (B_new,) of every layer, in that order (repeats allowed)."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional cache and optional explicit weights."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj.is_residual_output = True  # scaled at init, see MMBM._init_weights

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) -> (B, T, D) and, when ``need_weights``, head-averaged weights (B, T, S)."""
        B, T, D = x.shape
        hs = D // self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, nh, S, hs), S = cached + T
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            # The same softmax(QKᵀ/√d_k)V spelled out, only when a caller asks for the map.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attention = scores.softmax(dim=-1)  # (B, nh, T, S)
            weights = attention.mean(dim=1)  # (B, T, S)
            y = F.dropout(attention, dropout_p, self.training) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.proj(y), weights


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)
        self.proj.is_residual_output = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, D)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (arXiv:2002.04745)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_attention = nn.LayerNorm(config.d_model)
        self.attention = SelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attention(self.ln_attention(x), mask, cache, layer, need_weights)
        x = x + self.dropout(attended)  # (B, T, D)
        x = x + self.mlp(self.ln_mlp(x))  # (B, T, D)
        return x, weights


def sinusoidal_positions(n_positions: int, d_model: int) -> Tensor:
    """Fixed sine/cosine position table (n_positions, d_model) of arXiv:1706.03762 §3.5."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table  # (P, D)
