"""The one error every stage of the spool raises to its callers."""


class SpoolError(RuntimeError):
    """The spool cannot take records (not started, closed, or its disk failed)."""


class SpoolDiskFull(SpoolError):
    """The spool's disk is full (ENOSPC, EDQUOT): records are refused until a probe write
    succeeds again, which the writer tries by itself; nothing acknowledged is lost."""
