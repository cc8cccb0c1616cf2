"""The forward stage on the Orthanc client: the pipeline's Forwarder over pacs.client.Pacs."""

from __future__ import annotations

from pathlib import Path

from gateway.ingest.stages import ForwardOutcome
from gateway.pacs.client import Pacs


class PacsForwarder:
    """Puts a row's received bytes into Orthanc; a version conflict is reported, not raised."""

    def __init__(self, pacs: Pacs) -> None:
        self.pacs = pacs

    def forward(self, path: Path, *, digest: bytes) -> ForwardOutcome:
        """Store the Part-10 file at ``path``, whose dataset digest is ``digest``."""
        result = self.pacs.store(path, digest=digest)
        conflict = None
        if result.conflict:
            theirs = result.orthanc_digest.hex()[:16] if result.orthanc_digest else "?"
            conflict = (
                f"Orthanc {result.orthanc_id} holds digest {theirs}…, the gateway received "
                f"{digest.hex()[:16]}… under the same SOP Instance UID"
            )
        return ForwardOutcome(orthanc_id=result.orthanc_id, conflict=conflict)
