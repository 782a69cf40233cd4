"""A Llama decoder in plain PyTorch whose state dict is the Hugging Face LlamaForCausalLM layout.

Shapes: B batch, T new tokens, P cached tokens, d hidden, Hq / Hkv query / KV heads, D head_dim,
V vocabulary. RoPE is the Hugging Face "rotate half" form (the layout engine/model expects), with
cos/sin computed in fp32 from absolute positions. GQA: KV head j serves query heads
j*g .. j*g+g-1 (g = Hq / Hkv). Runs on torch 1.13 (CPU, attention written out) and torch >= 2
(scaled_dot_product_attention: flash or memory-efficient kernels on the GPU, never the quadratic
math fallback during training).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


@dataclasses.dataclass
class Config:
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 5
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 16384
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 1
    eos_token_id: int = 2

    def hf_dict(self, dtype: str) -> dict:
        d = dataclasses.asdict(self)
        d.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
                  "tie_word_embeddings": True, "torch_dtype": dtype})
        return d

    @staticmethod
    def from_hf(path: str) -> "Config":
        with open(path) as f:
            d = json.load(f)
        names = {f.name for f in dataclasses.fields(Config)}
        return Config(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype) if dtype != torch.float32 else self.weight * x


def rope_cos_sin(cfg: Config, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """positions [T] (int64) -> cos, sin [T, D] fp32."""
    D = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64,
                                                 device=positions.device) / D))
    f = positions.to(torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([f, f], dim=-1)
    return emb.cos().float(), emb.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [T, D]. Rotates in fp32, returns x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d, D = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_attention_heads * D, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_key_value_heads * D, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_key_value_heads * D, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * D, d, bias=False)

    def forward(self, x, cos, sin, past: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        """x [B, T, d]; past (k, v) [B, Hkv, P, D] post-RoPE or None.
        Returns out [B, T, d] and this call's (k, v) [B, Hkv, T, D]."""
        B, T, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, T, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k = q.to(v.dtype), k.to(v.dtype)
        new = (k, v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        g = c.num_attention_heads // c.num_key_value_heads
        if g > 1:
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
        if past is None and HAS_SDPA and x.is_cuda:
            o = sdpa_causal(q, k, v)
        else:
            o = manual_attention(q, k, v)
        o = o.transpose(1, 2).reshape(B, T, c.num_attention_heads * c.head_dim)
        return self.o_proj(o), new


def sdpa_causal(q, k, v):
    """Causal attention through flash / memory-efficient kernels only (an error rather than the
    quadratic-memory fallback)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    except ImportError:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def manual_attention(q, k, v):
    """q [B, H, T, D] are the last T of the S = k.shape[2] positions; causal. fp32 softmax."""
    T, S, D = q.shape[2], k.shape[2], q.shape[3]
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(D)
    i = torch.arange(T, device=q.device)[:, None] + (S - T)
    j = torch.arange(S, device=q.device)[None, :]
    s = s.masked_fill(j > i, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v.float()).to(v.dtype)


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, past):
        a, new = self.self_attn(self.input_layernorm(x), cos, sin, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), new


class Body(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    """State dict keys: model.embed_tokens.weight, model.layers.N.{input_layernorm,
    self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}.weight,
    model.norm.weight. The LM head is tied to the embedding (no lm_head.weight)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)

    def init_weights(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        resid = std / math.sqrt(2 * self.cfg.num_hidden_layers)
        for name, p in sorted(self.named_parameters()):
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                s = resid if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * s)

    def forward(self, ids: torch.Tensor, start: int = 0,
                past: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None,
                hidden_only: bool = False):
        """ids [B, T] at positions start .. start+T-1; past: per layer (k, v) of positions
        0 .. start-1, or None (then start must be 0). Returns logits [B, T, V] (or the final
        hidden states [B, T, d] when hidden_only) and the per-layer (k, v) of these T tokens."""
        if past is None and start != 0:
            raise ValueError("start > 0 needs past")
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        cos, sin = rope_cos_sin(self.cfg, pos)
        x = self.model.embed_tokens(ids)
        news = []
        for i, layer in enumerate(self.model.layers):
            x, new = layer(x, cos, sin, None if past is None else past[i])
            news.append(new)
        x = self.model.norm(x)
        if hidden_only:
            return x, news
        return self.logits(x), news

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.model.embed_tokens.weight)


def num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def flops_per_token(cfg: Config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 x matrix parameters plus
    causal attention, 2 x 2 x (L/2) x Hq x D per layer forward (QK^T and PV over half the keys
    on average)."""
    d, D = cfg.hidden_size, cfg.head_dim
    per_layer = (d * cfg.num_attention_heads * D * 2 + d * cfg.num_key_value_heads * D * 2 +
                 3 * d * cfg.intermediate_size)
    matrix = cfg.num_hidden_layers * per_layer + cfg.vocab_size * d
    attn = cfg.num_hidden_layers * 2 * 2 * (seq_len / 2) * cfg.num_attention_heads * D
    return 3 * (2 * matrix + attn)
