"""``pkv``: our own prefix, an embedding through an MLP (Li & Liang 2021) to per-layer K/V of the model's KV heads."""
import math

import torch
from torch import nn

from sciqa.adapters import PkvOptions
from sciqa.adapters.prefix import PrefixLM


class PrefixEncoder(nn.Module):
    """(batch) -> per layer (keys, values), each (batch, kv_heads, prefix_len, head_dim) of the VLM's language model."""

    def __init__(self, prefix_len: int, config):
        super().__init__()
        text = config.get_text_config()
        kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.shape = (prefix_len, text.num_hidden_layers, 2, kv, head_dim)
        self.embedding = nn.Embedding(prefix_len, text.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(text.hidden_size, text.hidden_size), nn.Tanh(),
                                 nn.Linear(text.hidden_size, math.prod(self.shape[1:])))

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        kvs = self.mlp(self.embedding.weight).view(self.shape).permute(1, 2, 3, 0, 4)  # (layers, 2, kv, P, head_dim)
        kvs = kvs.unsqueeze(2).expand(-1, -1, batch_size, -1, -1, -1)  # the same prefix for every row
        return [(layer[0], layer[1]) for layer in kvs]


class PKV(PrefixLM):
    def __init__(self, lm, options: PkvOptions):
        super().__init__(lm, options.prefix_len)
        self.encoder = PrefixEncoder(options.prefix_len, lm.model.config).to(lm.device)  # float32, cast per call

    def prefix_kv(self, batch_size: int):
        return self.encoder(batch_size)
