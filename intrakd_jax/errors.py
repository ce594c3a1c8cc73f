"""Errors the training code raises for problems with the user's configuration."""


class ConfigError(ValueError):
    """The configuration asks for something that cannot work; the message names the field."""
