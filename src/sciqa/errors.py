"""The one user-error type: the CLI prints its message on one line and exits 2."""


class SciqaError(Exception):
    """Bad input a user can fix (unknown model, split, setting, missing file, server down)."""
