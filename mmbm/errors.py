"""The exceptions MMBM raises when input is refused.

Every boundary (file loaders, tokenizer, checkpoint loader, index) raises a
subclass of ``MMBMError`` with a message that names the problem, so callers such
as app.py can show it to a person as it is. Imports nothing from the package.
"""


class MMBMError(ValueError):
    """Base class for input MMBM refuses; the message is meant for a person."""


class ImageError(MMBMError):
    """An image could not be read or is not acceptable (corrupt, empty, too large)."""


class AudioError(MMBMError):
    """Audio could not be read or is not acceptable (empty, silent, non-finite, too long)."""


class TextError(MMBMError):
    """Text input is not acceptable (empty, too long, wrong type)."""


class ConfigError(MMBMError):
    """A configuration value is out of range; the message names the field."""


class CheckpointError(MMBMError):
    """A checkpoint directory is missing a file, truncated, or does not match its config."""


class DataError(MMBMError):
    """A corpus, manifest or data directory is missing, malformed or incomplete."""


class SearchIndexError(MMBMError):
    """An image index is corrupt, was built by another model, or was asked for an unknown id."""
