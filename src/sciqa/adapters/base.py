"""What every adapted model provides: forward, generate, and its trainable state."""
import torch
from torch import nn


class AdaptedLM(nn.Module):
    """A frozen base model (``base``, with its ``family``'s quirks) plus trainable adapter parameters.
    Subclasses implement ``build``, ``forward`` (the base's output, with ``.logits``) and ``generate``."""

    variant = ""

    def __init__(self, base: nn.Module, family):
        super().__init__()
        self.base = base
        self.family = family
        self.options: dict = {}

    @property
    def config(self):
        return self.base.config

    def _trainable_module(self) -> nn.Module:
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self._trainable_module().named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self._trainable_module().named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    def export_for_serving(self, folder) -> bool:
        """Write the adapter as serving engines load it; False when there is none (prefixes: vllm#660)."""
        return False

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def enable_gradient_checkpointing(self) -> None:
        self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.base.config.use_cache = False
