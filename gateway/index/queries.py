"""The rules every reader of the index shares, as SQL and as Python: which rows are versions.

A row of ``instances`` is a *version* of its image unless its stage says it is not: a
``duplicate`` repeats a version already recorded (same record key, same digest), a
``rejected`` reception never became one. Versions are what is numbered, compared with a
copy and proven in a batch. The gateway's index (:mod:`gateway.index.db`), the Orthanc
plugin's read-only view of it (:mod:`gateway.orthanc_plugin.evidence`) and the verdicts
read rows by this one rule.
"""

from __future__ import annotations

#: Stages of rows that are not versions of their image.
NOT_VERSIONS = ("duplicate", "rejected")

#: The rule as a condition on ``instances``: ``stage NOT IN ('duplicate', 'rejected')``.
IS_VERSION = f"stage NOT IN ({', '.join(repr(stage) for stage in NOT_VERSIONS)})"

#: A version that has been fingerprinted: one a copy's digest can be compared with.
IS_FINGERPRINTED_VERSION = f"{IS_VERSION} AND digest IS NOT NULL"


def is_version(stage: str) -> bool:
    """Whether a row at ``stage`` is a version of its image (:data:`IS_VERSION`, for rows read)."""
    return stage not in NOT_VERSIONS
