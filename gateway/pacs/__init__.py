"""Orthanc: the REST client every stage and check uses, and the embedded Orthanc `up` runs."""
