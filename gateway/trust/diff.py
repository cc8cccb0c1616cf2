"""The attribute diff: which attributes a copy changed against the sealed original.

Pixel Data and File Meta are left out (the pixel digest and the transfer syntax speak for
them); nested sequences are walked. Values are shown only to roles allowed to see patient
data. Each file is parsed within bounds, so a copy crafted to inflate or to nest without
end is reported as a change, never read whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from gateway.core.fingerprint import load_dataset
from gateway.errors import DatasetTooLarge, DatasetUnreadable

#: The most bytes, and elements, of attributes (before Pixel Data) a diff reads from a file.
DIFF_MAX_BYTES = 64 << 20
DIFF_MAX_ELEMENTS = 100_000


@dataclass(frozen=True)
class AttributeChange:
    """One attribute that differs between the sealed original and the copy checked.

    ``before``/``after`` hold values only for roles allowed to see patient data;
    otherwise they are ``None`` and ``redacted`` is true.
    """

    tag: str
    keyword: str
    change: Literal["changed", "added", "removed"]
    before: str | None = None
    after: str | None = None
    redacted: bool = False


def diff(
    original: Path, copy: Path, *, show_phi: bool, limit: int | None = None
) -> list[AttributeChange]:
    """Attributes that differ between two Part-10 files, Pixel Data excluded, File Meta excluded.

    Nested sequences are walked; a changed item attribute is named by its path, e.g.
    ``(0008,1140)[0](0008,1155)``. Each file is parsed within bounds (a deflated one
    inflates at most ``limit`` bytes; at most DIFF_MAX_BYTES of attributes are compared).
    """
    try:
        before = _attributes(original, limit)
        after = _attributes(copy, limit)
    except DatasetUnreadable as exc:  # an unparsable copy is a change in itself
        reason = "too large to compare" if isinstance(exc, DatasetTooLarge) else "unreadable"
        return [AttributeChange("", "", "changed", None, reason, not show_phi)]
    changes: list[AttributeChange] = []
    _diff_datasets(before, after, prefix="", show_phi=show_phi, out=changes)
    return changes


def _attributes(path: Path, limit: int | None) -> Dataset:
    with path.open("rb") as stream:
        return load_dataset(
            stream, max_bytes=DIFF_MAX_BYTES, max_elements=DIFF_MAX_ELEMENTS, limit=limit
        )


def _diff_datasets(
    before: Dataset, after: Dataset, *, prefix: str, show_phi: bool, out: list[AttributeChange]
) -> None:
    tags = sorted(set(before.keys()) | set(after.keys()))
    for tag in tags:
        if Tag(tag).group == 0x0002:
            continue
        old = before.get(tag)
        new = after.get(tag)
        name = f"{prefix}({Tag(tag).group:04X},{Tag(tag).element:04X})"
        keyword = (old or new).keyword if (old or new) is not None else ""
        if old is None or new is None:
            out.append(
                AttributeChange(
                    name,
                    keyword,
                    "added" if old is None else "removed",
                    _shown(old, show_phi),
                    _shown(new, show_phi),
                    not show_phi,
                )
            )
            continue
        if old.VR == "SQ" and new.VR == "SQ" and len(old.value) == len(new.value):
            for i, (a, b) in enumerate(zip(old.value, new.value, strict=True)):
                _diff_datasets(a, b, prefix=f"{name}[{i}]", show_phi=show_phi, out=out)
            continue
        if old.value != new.value or old.VR != new.VR:
            out.append(
                AttributeChange(
                    name,
                    keyword,
                    "changed",
                    _shown(old, show_phi),
                    _shown(new, show_phi),
                    not show_phi,
                )
            )


def _shown(element: DataElement | None, show_phi: bool) -> str | None:
    if element is None or not show_phi:
        return None
    if element.VR == "SQ":
        return f"<sequence of {len(element.value)} item(s)>"
    text = str(element.value)
    return text if len(text) <= 128 else text[:125] + "..."


__all__ = ["DIFF_MAX_BYTES", "DIFF_MAX_ELEMENTS", "AttributeChange", "diff"]
