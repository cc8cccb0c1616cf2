"""What the benchmark sends: sizes (full or tiny) and the fixture files, generated once.

Files come from ``dicom_fixtures`` and are kept under ``<work>/data/`` keyed by their
sizes, so a second run reuses them (they are deterministic).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import dicom_fixtures
from dicom_fixtures._dataset import make_uid
from dicom_fixtures.series import DX_SERIES_STUDY_UID


@dataclass(frozen=True)
class Workload:
    """Sizes of every part of the benchmark."""

    ct_slices: int = 200
    ct_matrix: int = 512
    dx_images: int = 20
    dx_rows: int = 2500
    dx_cols: int = 2000
    seed_images: int = 100
    parallel_slices: int = 200  # the CT series again (own UIDs), over 8 associations
    retrieval_slices: int = 200
    retrieval_repetitions: int = 3
    large_bytes: int = 1_000_000_000
    limits_mib: int = 256

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


FULL = Workload()
#: A few small instances per part: checks that every part runs, measures nothing useful.
QUICK = Workload(
    ct_slices=4,
    ct_matrix=64,
    dx_images=2,
    dx_rows=250,
    dx_cols=200,
    seed_images=4,
    parallel_slices=16,
    retrieval_slices=3,
    retrieval_repetitions=1,
    large_bytes=4 << 20,
    limits_mib=8,
)

# The seed workload's chest images are their own study, apart from the 20 DX images.
SEED_STUDY_UID = make_uid(1, 301)
SEED_PREFIX = make_uid(4, 301) + "."
# The CT series sent over concurrent associations: a study of its own, unseen by either side.
PARALLEL_STUDY_UID = make_uid(1, 302)
PARALLEL_PREFIX = make_uid(4, 302) + "."


@dataclass(frozen=True)
class Files:
    """The generated instances of one workload."""

    ct: list[Path]
    dx: list[Path]
    seed: list[Path]
    large: Path
    parallel: list[Path]


def _cached(
    directory: Path, key: dict[str, object], make: Callable[[Path], list[Path]]
) -> list[Path]:
    """Run ``make(directory)`` unless ``directory`` already holds files made with ``key``."""
    marker = directory / "made.json"
    if marker.exists() and json.loads(marker.read_text()) == key:
        return sorted(p for p in directory.iterdir() if p.suffix == ".dcm")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    paths = make(directory)
    marker.write_text(json.dumps(key))
    return paths


def prepare(work: Path, workload: Workload) -> Files:
    """Generate (or reuse) every file the workload sends."""
    data = work / "data"
    w = workload
    ct = _cached(
        data / f"ct-{w.ct_slices}x{w.ct_matrix}",
        {"count": w.ct_slices, "matrix": w.ct_matrix},
        lambda d: dicom_fixtures.ct_series(
            d, count=w.ct_slices, rows=w.ct_matrix, cols=w.ct_matrix
        ),
    )
    dx = _cached(
        data / f"dx-{w.dx_images}x{w.dx_rows}x{w.dx_cols}",
        {"count": w.dx_images, "rows": w.dx_rows, "cols": w.dx_cols, "study": DX_SERIES_STUDY_UID},
        lambda d: dicom_fixtures.dx_series(d, count=w.dx_images, rows=w.dx_rows, cols=w.dx_cols),
    )
    seed = _cached(
        data / f"seed-{w.seed_images}x{w.dx_rows}x{w.dx_cols}",
        {"count": w.seed_images, "rows": w.dx_rows, "cols": w.dx_cols, "study": SEED_STUDY_UID},
        lambda d: dicom_fixtures.dx_series(
            d,
            count=w.seed_images,
            rows=w.dx_rows,
            cols=w.dx_cols,
            study_uid=SEED_STUDY_UID,
            prefix=SEED_PREFIX,
        ),
    )
    (large,) = _cached(
        data / f"large-{w.large_bytes}",
        {"bytes": w.large_bytes},
        lambda d: [dicom_fixtures.large_multiframe(d / "large.dcm", target_bytes=w.large_bytes)],
    )
    parallel = _cached(
        data / f"ct-parallel-{w.parallel_slices}x{w.ct_matrix}",
        {"count": w.parallel_slices, "matrix": w.ct_matrix, "study": PARALLEL_STUDY_UID},
        lambda d: dicom_fixtures.ct_series(
            d,
            count=w.parallel_slices,
            rows=w.ct_matrix,
            cols=w.ct_matrix,
            study_uid=PARALLEL_STUDY_UID,
            prefix=PARALLEL_PREFIX,
        ),
    )
    return Files(ct=ct, dx=dx, seed=seed, large=large, parallel=parallel)
