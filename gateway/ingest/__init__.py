"""From the DICOM port to committed: receive, spool, commitment, the pipeline and its stages."""
