"""``pkv``: our own prefix: a learned embedding of ``prefix_len`` virtual tokens through an MLP (Li & Liang 2021)
to per-layer keys and values of the model's KV heads (grouped-query models: ``num_key_value_heads``)."""
from __future__ import annotations

import torch
from torch import nn

from sciqa.adapters import PkvOptions
from sciqa.adapters.prefix import PrefixLM


def text_shape(config) -> tuple[int, int, int, int]:
    """(layers, kv_heads, head_dim, hidden) of the language model inside a VLM config."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv, head_dim, text.hidden_size


class PrefixEncoder(nn.Module):
    """(batch) -> per layer (keys, values), each (batch, kv_heads, prefix_len, head_dim)."""

    def __init__(self, prefix_len: int, layers: int, kv_heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.shape = (prefix_len, layers, 2, kv_heads, head_dim)
        self.embedding = nn.Embedding(prefix_len, hidden)
        out = layers * 2 * kv_heads * head_dim
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out))

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        p, layers, _, kv, hd = self.shape
        flat = self.mlp(self.embedding.weight)                      # (P, layers*2*kv*hd)
        kvs = flat.view(p, layers, 2, kv, hd).permute(1, 2, 3, 0, 4)  # (layers, 2, kv, P, hd)
        kvs = kvs.unsqueeze(2).expand(layers, 2, batch_size, kv, p, hd)
        return [(kvs[i, 0], kvs[i, 1]) for i in range(layers)]


class PKV(PrefixLM):
    variant = "pkv"

    @classmethod
    def build(cls, lm, options: PkvOptions) -> PKV:
        self = cls(lm.model, lm.family, options.prefix_len)
        self.encoder = PrefixEncoder(options.prefix_len, *text_shape(lm.model.config))
        self.encoder.to(device=lm.device)  # float32 master weights, cast to the base dtype per call
        return self

    def prefix_kv(self, batch_size: int):
        return self.encoder(batch_size)
