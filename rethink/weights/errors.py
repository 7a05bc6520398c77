"""Why MODEL.WEIGHTS cannot be used."""
from ..utils.usererrors import UserError


class WeightsError(RuntimeError, UserError):
    """MODEL.WEIGHTS cannot be used: unreadable file, nothing matching the model, bad path."""


class UnsafeFileError(WeightsError):
    """The file asks to run code (a pickled global that is not plain data): refused, nothing ran."""


class NormMismatchError(WeightsError):
    """BatchNorm weights for GroupNorm layers (or the reverse, or for layers without a norm)."""
