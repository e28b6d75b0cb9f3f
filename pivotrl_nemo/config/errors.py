"""The configuration error type (its own module so that validation and loading share it)."""


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""
