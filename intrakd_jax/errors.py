"""Errors the training code raises for problems with the user's configuration."""


class ConfigError(ValueError):
    """The configuration asks for something that cannot work; the message names the field."""


class StorageError(OSError):
    """A file or checkpoint could not be written (disk full, read-only or unwritable place).

    The message names the path and says what was kept: work up to the newest complete
    checkpoint is never lost, and the same command resumes once there is space.
    """
