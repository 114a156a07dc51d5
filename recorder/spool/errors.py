"""The one error every stage of the spool raises to its callers."""


class SpoolError(RuntimeError):
    """The spool cannot take records (not started, closed, or its disk failed)."""
