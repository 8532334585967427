"""One module per step; each is a plain function taking a dataclass config."""
