"""Command line: ``python -m dicom_fixtures OUT_DIR [--ct N] [--large BYTES]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dicom_fixtures import CATALOGUE, FixtureToolError, ct_series, generate, large_multiframe


def main(argv: Sequence[str] | None = None) -> int:
    """Write the fixtures asked for on the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` if ``None``.

    Returns
    -------
    int
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m dicom_fixtures",
        description="Write deterministic DICOM fixtures: the catalogue as OUT_DIR/<name>.dcm, "
        "optionally a CT series in OUT_DIR/ct_series/ and a large multi-frame instance.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        choices=[fixture.name for fixture in CATALOGUE],
        help="write only this catalogue fixture (repeatable)",
    )
    parser.add_argument("--no-catalogue", action="store_true", help="skip the catalogue fixtures")
    parser.add_argument("--ct", metavar="N", type=int, help="also write a CT series of N slices")
    parser.add_argument(
        "--large",
        metavar="BYTES",
        type=int,
        help="also write OUT_DIR/large_multiframe.dcm with about BYTES of pixel data",
    )
    args = parser.parse_args(argv)

    written: list[Path] = []
    try:
        if not args.no_catalogue:
            written += generate(args.out_dir, args.only)
        if args.ct is not None:
            written += ct_series(args.out_dir / "ct_series", args.ct)
        if args.large is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            written.append(large_multiframe(args.out_dir / "large_multiframe.dcm", args.large))
    except (FixtureToolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
