"""The configuration error type (its own module so that validation and loading share it)."""

from pivotrl_nemo.utils.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem, with the offending key in the message (a ``UserError``: the CLI
    prints the message alone and exits 2; still a ``ValueError`` for existing callers)."""
