"""SASRec's Transformer blocks (causal self-attention + position-wise feed-forward), by kind.

- ``pre_ln``: x + Attn(LN(x)), then x + FFN(LN(x)) (Xiong et al., 2020), GELU feed-forward;
- ``post_ln``: LN(x + Attn(x)), then LN(x + FFN(x)) (Vaswani et al., 2017), GELU feed-forward;
- ``sasrec``: Kang & McAuley's block (their code, and PreferredAI/cornac
  ``cornac/models/sasrec/sasrec.py``): q = LN(x), x = q + Attn(query q, keys and values x),
  then x = LN(x), x + FFN(x), with a ReLU feed-forward;
- ``ligr``: the LiGR layer (Hertel et al., 2025, arXiv 2502.03417) as eSASRec uses it
  (Tikhonovich et al., 2025, arXiv 2508.06450; blondered/transformer_benchmark
  ``src/models/transformers/transformer_layers/ligr.py``): pre-LN with gated residuals,
  x + sigmoid(W1 x) * Attn(LN(x)), then x + sigmoid(W2 x) * FFN(LN(x)), and a SwiGLU
  feed-forward without biases (Shazeer, 2020): W_out(silu(W_a y) * W_b y).

Dropout (rate ``dropout``) sits on the attention weights, inside the feed-forward (after its
activation) and on each sub-layer's output before the residual sum, in every kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLOCKS = ("pre_ln", "post_ln", "sasrec", "ligr")
# kinds whose stack feeds raw (un-normalised) embeddings to the first block
RAW_INPUT_BLOCKS = ("sasrec", "ligr")
# kinds whose stack ends without a final LayerNorm (post_ln normalises inside the block; the
# benchmark's LiGRLayers stack has none)
NO_FINAL_NORM_BLOCKS = ("post_ln", "ligr")


class SwiGLU(nn.Module):
    """Gated feed-forward W_out(dropout(silu(W_a x) * W_b x)), no biases (LiGR's)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w_a = nn.Linear(dim, hidden, bias=False)
        self.w_b = nn.Linear(dim, hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(self.drop(F.silu(self.w_a(x)) * self.w_b(x)))


class Block(nn.Module):
    """One block of ``kind`` (one of BLOCKS, see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, kind: str):
        super().__init__()
        if kind not in BLOCKS:
            raise ValueError(f"sasrec.block: unknown {kind!r}; valid choices: {', '.join(BLOCKS)}")
        self.num_heads, self.dropout, self.kind = num_heads, dropout, kind
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if kind == "ligr":
            self.ffn: nn.Module = SwiGLU(dim, ffn_dim, dropout)
            self.gate1, self.gate2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        else:
            act = nn.ReLU() if kind == "sasrec" else nn.GELU()
            self.ffn = nn.Sequential(
                nn.Linear(dim, ffn_dim), act, nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
            )
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def attend(self, x: Tensor, mask: Tensor, kv: Tensor | None = None) -> Tensor:
        """Queries from x [B, L, D], keys and values from ``kv`` (default x), mask [B, 1, L, L]
        (True = may attend) -> [B, L, D]."""
        b, length, dim = x.shape
        heads = (b, length, self.num_heads, dim // self.num_heads)
        if kv is None:
            q, k, v = self.qkv(x).view(b, length, 3, *heads[2:]).permute(2, 0, 3, 1, 4)
        else:
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = self.qkv.bias.split([dim, 2 * dim])
            q = F.linear(x, w_q, b_q).view(heads).transpose(1, 2)
            k, v = F.linear(kv, w_kv, b_kv).view(b, length, 2, *heads[2:]).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.kind == "pre_ln":
            x = x + self.drop(self.attend(self.norm1(x), mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        if self.kind == "post_ln":
            x = self.norm1(x + self.drop(self.attend(x, mask)))
            return self.norm2(x + self.drop(self.ffn(x)))
        if self.kind == "ligr":
            x = x + torch.sigmoid(self.gate1(x)) * self.drop(self.attend(self.norm1(x), mask))
            return x + torch.sigmoid(self.gate2(x)) * self.drop(self.ffn(self.norm2(x)))
        q = self.norm1(x)
        x = self.norm2(q + self.drop(self.attend(q, mask, kv=x)))
        return x + self.drop(self.ffn(x))
