"""The tests' throwaway PostgreSQL cluster: :mod:`gateway.bench.postgres` (``make bench``
starts one too, for ``postgres_ack_ratio``)."""

from gateway.bench.postgres import BIN, PostgresCluster

__all__ = ["BIN", "PostgresCluster"]
