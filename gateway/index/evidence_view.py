"""The Orthanc plugin's read-only path into the gateway's PostgreSQL index: a view and its role.

The plugin judges a stored copy by the versions the gateway recorded for its SOP Instance
UID. On PostgreSQL it reads them through :data:`VIEW`, a view of ``instances`` holding
only what :mod:`gateway.orthanc_plugin.evidence` reads: the UID it looks up, the order
of the rows, each version's digests, keys (HMAC pseudonyms, not patient data) and anchor
evidence, and only the rows that are fingerprinted versions (the index's rule,
:data:`~gateway.index.queries.IS_FINGERPRINTED_VERSION`). No spool, object or error
column, no calling AE, no study or series UID.

The reader role gets ``SELECT`` on the view and nothing else: the view runs with its
owner's rights (PostgreSQL's default), so the role reads through it without any right on
``instances``. ``security_barrier`` keeps a reader's own functions from seeing rows the
view filters out. The look-up is one indexed query (``instances_uid``).

The plugin may keep what it looked up (:mod:`gateway.orthanc_plugin.evidence_cache`)
because the index tells it when a UID's rows change: triggers on ``instances``
(:data:`TRIGGER_STATEMENTS`, a step of the index's schema on PostgreSQL, so no write path
can forget them) ``NOTIFY`` :data:`CHANNEL` with the SOP Instance UID whenever a row's
projection through the view changes: a version appearing, anchored, superseded, erased,
rejected or made a duplicate. Stage changes the view does not show (the pipeline's steps
between fingerprint and commit) notify nothing. The payload is a SOP Instance UID, which
any role allowed to connect to the database can ``LISTEN`` for; the view shows the same
UIDs to the reader role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.index.queries import IS_FINGERPRINTED_VERSION, NOT_VERSIONS

if TYPE_CHECKING:
    import psycopg

#: The view's name (in the schema of ``instances``, ``public`` unless the search path says).
VIEW = "xray_plugin_evidence"

#: The view's columns: ``seq`` orders a UID's versions (the row id), the rest as stored.
COLUMNS = (
    "seq", "sop_instance_uid", "version", "digest", "pixel_digest", "record_key", "tx_hash",
    "block_number", "block_time", "recorder", "batch_id", "leaf_index", "transfer_syntax",
    "patient_key", "proof", "received_at", "erased",
)  # fmt: skip

#: What the plugin reads per copy: every version of one UID, oldest first.
VERSIONS_SQL = (
    "SELECT version, digest, pixel_digest, record_key, tx_hash, block_number, block_time,"
    " recorder, batch_id, leaf_index, transfer_syntax, patient_key, proof, received_at,"
    f" erased FROM {VIEW} WHERE sop_instance_uid = %s ORDER BY seq"
)

# ``erased`` (erasure part): the row was erased on request, so the plugin knows at once,
# before its ledger mirror reads the retirement; appended last, as CREATE OR REPLACE wants.
_EXPRESSIONS = {"seq": "id AS seq", "erased": "(stage = 'erased') AS erased"}
_SOURCE = ", ".join(_EXPRESSIONS.get(name, name) for name in COLUMNS)
CREATE_VIEW = (
    f"CREATE OR REPLACE VIEW {VIEW} WITH (security_barrier = true) AS"
    f" SELECT {_SOURCE} FROM instances WHERE {IS_FINGERPRINTED_VERSION}"
)


#: The ``NOTIFY`` channel of evidence changes; the payload is the SOP Instance UID whose
#: rows changed, or :data:`EVERYTHING` (the table was truncated).
CHANNEL = "xray_evidence"
EVERYTHING = ""


def fingerprinted_version(row: str) -> str:
    """:data:`~gateway.index.queries.IS_FINGERPRINTED_VERSION` on the trigger's ``row``
    (``NEW`` or ``OLD``): whether that row shows in the view."""
    stages = ", ".join(repr(stage) for stage in NOT_VERSIONS)
    return f"{row}.stage NOT IN ({stages}) AND {row}.digest IS NOT NULL"


def _projection(row: str) -> str:
    """What the view shows of ``row``: whether it shows at all, then every column."""
    sources = {"seq": "id", "erased": "stage = 'erased'"}
    shown = ", ".join(f"({row}.{sources.get(name, name)})" for name in COLUMNS)
    return f"ROW(({fingerprinted_version(row)}), {shown})"


_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION xray_evidence_changed() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('{CHANNEL}', NEW.sop_instance_uid);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{CHANNEL}', OLD.sop_instance_uid);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('{CHANNEL}', OLD.sop_instance_uid);
        IF NEW.sop_instance_uid IS DISTINCT FROM OLD.sop_instance_uid THEN
            PERFORM pg_notify('{CHANNEL}', NEW.sop_instance_uid);
        END IF;
    ELSE
        PERFORM pg_notify('{CHANNEL}', '{EVERYTHING}');
    END IF;
    RETURN NULL;
END
$body$"""

#: The notifying triggers: name, event, level, condition.
TRIGGERS: tuple[tuple[str, str, str, str | None], ...] = (
    ("xray_evidence_inserted", "AFTER INSERT", "FOR EACH ROW", fingerprinted_version("NEW")),
    (
        "xray_evidence_updated",
        "AFTER UPDATE",
        "FOR EACH ROW",
        f"(({fingerprinted_version('OLD')}) OR ({fingerprinted_version('NEW')}))"
        f" AND {_projection('OLD')} IS DISTINCT FROM {_projection('NEW')}",
    ),
    ("xray_evidence_deleted", "AFTER DELETE", "FOR EACH ROW", fingerprinted_version("OLD")),
    ("xray_evidence_truncated", "AFTER TRUNCATE", "FOR EACH STATEMENT", None),
)

#: The notifying triggers on ``instances`` (PostgreSQL only; idempotent, run in order).
TRIGGER_STATEMENTS: tuple[str, ...] = (
    _NOTIFY_FUNCTION,
    *(
        statement
        for name, event, each, when in TRIGGERS
        for statement in (
            f"DROP TRIGGER IF EXISTS {name} ON instances",
            f"CREATE TRIGGER {name} {event} ON instances {each}"
            + (f" WHEN ({when})" if when else "")
            + " EXECUTE FUNCTION xray_evidence_changed()",
        )
    ),
)


def create_evidence_view(conn: psycopg.Connection[object]) -> None:
    """Create (or replace) :data:`VIEW` over ``instances``; run by the index's owner.

    Idempotent: the index's migrations may run it on every start. The caller commits
    (or runs in autocommit). The notifying triggers are the schema's (a step run once, in
    the migration's transaction): dropping and making them again here, on every ``up``,
    would lock ``instances`` and, in autocommit, leave a moment with no trigger.
    """
    conn.execute(CREATE_VIEW)


def grant_evidence_reader(conn: psycopg.Connection[object], role: str) -> None:
    """Let ``role`` read :data:`VIEW` and nothing else the gateway owns.

    ``role`` must exist (a login role made by the administrator, with its own password).
    Whatever it was granted on ``instances``, ``batches`` and ``batch_members`` is revoked;
    its sessions start read-only. Idempotent.
    """
    from psycopg import sql

    name = sql.Identifier(role)
    conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(str(_one(conn, "SELECT current_schema()"))), name
        )
    )
    for table in ("instances", "batches", "batch_members"):
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(table), name))
    conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(VIEW), name))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(VIEW), name))
    conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(name))


def prepare_evidence_reader(url: str, role: str) -> None:
    """Create the view and let ``role`` read it, connected as the index's owner (``url``).

    What docker/compose.yaml's one-shot ``evidence-view`` job runs once the gateway has
    created its tables: ``python -m gateway.index.evidence_view [role]`` with
    ``GATEWAY_INDEX_URL`` set.
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        create_evidence_view(conn)
        grant_evidence_reader(conn, role)


def _one(conn: psycopg.Connection[object], query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None  # a SELECT of one value answers one row
    return row[0]  # type: ignore[index]


if __name__ == "__main__":  # docker/compose.yaml's evidence-view job
    import os
    import sys

    prepare_evidence_reader(
        os.environ["GATEWAY_INDEX_URL"], sys.argv[1] if len(sys.argv) > 1 else "xray_evidence"
    )
