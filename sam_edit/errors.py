"""Errors that samedit raises for the user to fix; the CLI prints each as one line, exit 1."""


class SameditError(Exception):
    """An error caused by input, settings or the environment, with the fix in its message."""


class ModelNotCachedError(SameditError):
    """A model is not in the local cache and downloads are off."""


class StageFileError(SameditError):
    """A stage file is unreadable, or was made for another image, size or model."""


class ImageError(SameditError):
    """An image cannot be read or converted."""


class SegmentationError(SameditError):
    """No segment was found, or none matches the requested phrase."""
