"""Deterministic synthetic DICOM fixtures for testing and benchmarking xray-gateway."""

from dicom_fixtures._codecs import FixtureToolError
from dicom_fixtures._dataset import UID_ROOT
from dicom_fixtures.catalogue import CATALOGUE, Fixture, generate
from dicom_fixtures.series import ct_series, dx_series, large_multiframe

__all__ = [
    "CATALOGUE",
    "UID_ROOT",
    "Fixture",
    "FixtureToolError",
    "ct_series",
    "dx_series",
    "generate",
    "large_multiframe",
]
