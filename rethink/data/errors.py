"""The data package's errors: every message names the file and the id (image / annotation / category)."""
from ..utils.usererrors import UserError


class DatasetError(ValueError, UserError):
    """Bad or missing data. The message names the file and the id (image / annotation / category)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A named dataset's files are not where the catalog looked; the message lists them and how to fix it."""
