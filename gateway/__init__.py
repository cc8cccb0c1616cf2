"""xray-gateway: fingerprint, seal and anchor every DICOM image before it reaches the PACS."""

__version__ = "0.1.0"
