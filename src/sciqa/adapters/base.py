"""What every adapted model provides: forward, generate, and its trainable state saved to and loaded from a folder."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sciqa.adapters import CONFIG_FILE, SERVING_FOLDER, WEIGHTS_FILE
from sciqa.errors import SciqaError


class AdaptedLM(nn.Module):
    """A frozen ``base`` plus trainable parameters; subclasses take (LoadedModel, options), ``attach`` sets the rest."""

    variant: str
    options: dict

    def __init__(self, lm):
        super().__init__()
        self.base = lm.model
        self.family = lm.family

    def _trainable_module(self) -> nn.Module:
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self._trainable_module().named_parameters() if p.requires_grad}

    def save(self, folder: str | Path, base_model: str) -> Path:
        """Write the adapter weights (trainable parameters only) and its config into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.trainable_state().items()}, str(folder / WEIGHTS_FILE))
        self.export_for_serving(folder / SERVING_FOLDER)
        (folder / CONFIG_FILE).write_text(json.dumps(
            {"variant": self.variant, "base_model": base_model, "options": self.options}, indent=2))
        return folder

    def load_weights(self, folder: str | Path) -> None:
        """Load saved trainable weights into this freshly attached adapter; every trainable tensor must match."""
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        own = self.trainable_state()
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise SciqaError(f"adapter weights in '{folder}' do not fit the {self.variant} adapter "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        self._trainable_module().load_state_dict(state, strict=False)  # copied in place, to each tensor's dtype

    def export_for_serving(self, folder) -> None:
        """Write the adapter as serving engines load it, where there is such a form (prefixes: none, vllm#660)."""

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def enable_gradient_checkpointing(self) -> None:
        self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.base.config.use_cache = False
