"""The index's schema as numbered steps, run on open; a newer schema than the code's is refused.

``schema_version`` holds one number: how many of :data:`STEPS` the database has had. An
index made before the table existed (version 0) gets every step; each step is
idempotent (``IF NOT EXISTS``, a column added only when absent), so an index that
already had a later table or column is upgraded without harm. Steps are only ever
appended: a released step is never edited.

A database whose version is above ``len(STEPS)`` was written by a newer gateway: opening
it raises :class:`~gateway.errors.IndexSchemaTooNew` rather than run on rows this code
does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import IndexSchemaTooNew
from gateway.index.engine import Connection
from gateway.index.evidence_view import TRIGGER_STATEMENTS


@dataclass(frozen=True)
class Create:
    """``CREATE … IF NOT EXISTS`` statements (SQLite's spelling; translated for PostgreSQL)."""

    sql: str


@dataclass(frozen=True)
class AddColumn:
    """A column added to an existing table, unless it is there already."""

    table: str
    name: str
    declaration: str


@dataclass(frozen=True)
class PostgresOnly:
    """Whole statements run only on PostgreSQL (a trigger and its function: SQLite's index
    has no reader to tell), each as one statement, never split."""

    statements: tuple[str, ...]


Step = Create | AddColumn | PostgresOnly

_INSTANCES = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    entry_id TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    calling_aet TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    stage TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    record_key BLOB,
    patient_key BLOB,
    digest BLOB,
    pixel_digest BLOB,
    transfer_syntax TEXT,
    modality TEXT,
    body_part TEXT,
    version INTEGER,
    kek_id TEXT,
    object_name TEXT,
    tx_hash TEXT,
    block_number INTEGER,
    block_time INTEGER,
    recorder TEXT,
    batch_id INTEGER,
    leaf_index INTEGER,
    proof BLOB,
    orthanc_id TEXT,
    conflict TEXT,
    committed_at REAL
);
CREATE INDEX IF NOT EXISTS instances_due ON instances (stage, next_attempt_at);
CREATE INDEX IF NOT EXISTS instances_uid ON instances (sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_key ON instances (record_key, digest);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    root BLOB NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    batch_id INTEGER,
    tx_hash TEXT,
    block_number INTEGER
);
CREATE TABLE IF NOT EXISTS batch_members (
    batch INTEGER NOT NULL REFERENCES batches (id),
    leaf_index INTEGER NOT NULL,
    row_id INTEGER NOT NULL REFERENCES instances (id),
    PRIMARY KEY (batch, leaf_index)
);
CREATE INDEX IF NOT EXISTS batch_members_row ON batch_members (row_id);
"""

# Storage Commitment requests (gateway/ingest/commitment.py), kept beside the rows.
# state: 'open' (waiting for its instances), 'ready' (report decided, not yet delivered),
# 'reported' (the modality answered the N-EVENT-REPORT)
_COMMITMENTS = """
CREATE TABLE IF NOT EXISTS commitments (
    id INTEGER PRIMARY KEY,
    transaction_uid TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    refs TEXT NOT NULL,
    received_at REAL NOT NULL,
    deadline REAL NOT NULL,
    state TEXT NOT NULL,
    event_type INTEGER,
    report TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    reported_at REAL
);
CREATE INDEX IF NOT EXISTS commitments_due ON commitments (state, next_attempt_at);
"""

# Alerts that reach people (part "notify", gateway/notify/outbox.py): one outbox row per
# (event, target); state 'pending' until the target took it (a 2xx, a syslog send), then
# 'delivered'. A row is claimed (claimed_by, claim_until) while a node sends it. The marks
# are each alert log's high-water mark: the last alert id enqueued from it.
_NOTIFY = """
CREATE TABLE IF NOT EXISTS notify_outbox (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    claim_until REAL NOT NULL DEFAULT 0,
    delivered_at REAL,
    UNIQUE (event_id, target)
);
CREATE INDEX IF NOT EXISTS notify_outbox_due ON notify_outbox (target, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS notify_marks (
    source TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
"""

# The receipts part: the append-only log's leaves, the contract's batches in id order
# (gateway/trust/tlog.py), read once from the chain and kept for every node.
_LOG_LEAVES = """
CREATE TABLE IF NOT EXISTS log_leaves (
    batch_id INTEGER NOT NULL PRIMARY KEY,
    root BLOB NOT NULL
)
"""

# The access trail (part "trail", issue #15; gateway/index/access.py): every image read,
# imported from the Orthanc plugin's journal (source 'orthanc-plugin:<node>', source_seq
# its journal id: the high-water mark) or written by the API (source 'api', no seq), and
# the Merkle batches that anchor them (a batch of kind Access on the contract).
_ACCESS_LOG = """
CREATE TABLE IF NOT EXISTS access_log (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    source_seq INTEGER,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    who_kind TEXT NOT NULL,
    route TEXT NOT NULL,
    sop_instance_uid TEXT,
    study_instance_uid TEXT,
    verdict TEXT NOT NULL,
    served INTEGER NOT NULL,
    batch INTEGER,
    leaf_index INTEGER,
    UNIQUE (source, source_seq)
);
CREATE INDEX IF NOT EXISTS access_log_study ON access_log (study_instance_uid, id);
CREATE INDEX IF NOT EXISTS access_log_who ON access_log (who, id);
CREATE INDEX IF NOT EXISTS access_log_batch ON access_log (batch, leaf_index);
CREATE TABLE IF NOT EXISTS access_batches (
    id INTEGER PRIMARY KEY,
    root BLOB NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    claimed_by TEXT,
    claim_until REAL NOT NULL DEFAULT 0,
    batch_id INTEGER,
    tx_hash TEXT,
    block_number INTEGER
)
"""

# The grants part (issue #16): one row per grant the gateway wrote to the chain; ``id`` is
# the chain's grant id. Names and UIDs stay here; the chain holds their keys only.
_GRANTS = """
CREATE TABLE IF NOT EXISTS grants (
    id INTEGER PRIMARY KEY,
    grantee TEXT NOT NULL,
    grantee_kind TEXT NOT NULL,
    grantee_key BLOB NOT NULL,
    patient_key BLOB NOT NULL,
    study_instance_uid TEXT,
    study_key BLOB,
    expires_at REAL NOT NULL,
    granted_at REAL NOT NULL,
    granted_by TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    block_number INTEGER NOT NULL,
    revoked_at REAL,
    revoked_by TEXT,
    revoke_tx TEXT
);
CREATE INDEX IF NOT EXISTS grants_grantee ON grants (grantee, id);
CREATE INDEX IF NOT EXISTS grants_patient ON grants (patient_key, id);
CREATE INDEX IF NOT EXISTS grants_study ON grants (study_instance_uid, id)
"""

# The erasure part (issue #16; gateway/index/erasure.py): each study's key (seal format v2)
# under its pseudonymous reference, wrapped under a KEK (NULL once destroyed); the erasure
# log (plans by hash, pseudonymous keys only); the studies the retention job listed.
_ERASURE = """
CREATE TABLE IF NOT EXISTS study_keys (
    study_ref BLOB NOT NULL PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    kek_id TEXT NOT NULL,
    wrapped_key BLOB,
    created_at REAL NOT NULL,
    destroyed_at REAL
);
CREATE TABLE IF NOT EXISTS erasures (
    id INTEGER PRIMARY KEY,
    plan_hash TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    asked_by TEXT NOT NULL,
    planned_at REAL NOT NULL,
    state TEXT NOT NULL,
    confirmed_by TEXT,
    confirmed_at REAL,
    done_at REAL,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retention_due (
    study_instance_uid TEXT NOT NULL PRIMARY KEY,
    modality TEXT NOT NULL,
    received_at REAL NOT NULL,
    due_at REAL NOT NULL,
    listed_at REAL NOT NULL
)
"""

# The erasure2 part (issue #16; gateway/index/erasure.py): which nodes have shed their
# local copies (spool, sealed dir) of an erasure's rows, and when; the rows an erasure
# named get its hash in ``instances.erase_plan`` (the pipeline's check reads it).
_ERASURE_SHED = """
CREATE TABLE IF NOT EXISTS erasure_shed (
    plan_hash TEXT NOT NULL,
    node TEXT NOT NULL,
    files INTEGER NOT NULL,
    shed_at REAL NOT NULL,
    PRIMARY KEY (plan_hash, node)
)
"""

# The siwe part (issue #16; gateway/index/grants.py, gateway/index/signin.py): where each
# chain-event follower has read to (the next block, and the hash of the last block read, by
# which a reorg is seen), the block a grant's revocation was mined in, the grants looked up
# by their keys (grants made on chain name keys only), and Sign-In with Ethereum's single-use
# nonces and its sessions (only a token's SHA-256), shared by every node of the index.
_SIWE = """
CREATE TABLE IF NOT EXISTS chain_cursors (
    name TEXT NOT NULL PRIMARY KEY,
    next_block INTEGER NOT NULL,
    last_hash TEXT
);
CREATE INDEX IF NOT EXISTS grants_grantee_key ON grants (grantee_key, id);
CREATE INDEX IF NOT EXISTS grants_study_key ON grants (study_key, id);
CREATE TABLE IF NOT EXISTS siwe_nonces (
    nonce TEXT NOT NULL PRIMARY KEY,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE TABLE IF NOT EXISTS siwe_sessions (
    token_sha256 TEXT NOT NULL PRIMARY KEY,
    address TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS siwe_sessions_address ON siwe_sessions (address, expires_at)
"""

# The grants2 part (issue #16; gateway/index/chain_requests.py): chain writes of the API and
# the CLI (grants, revocations, erasure's retirements), queued for the node's anchoring
# worker, the recorder account's one sender; with each one's outcome once it is mined.
_CHAIN_REQUESTS = """
CREATE TABLE IF NOT EXISTS chain_requests (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    asked_by TEXT NOT NULL,
    asked_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    claimed_by TEXT,
    done_at REAL,
    tx_hash TEXT,
    block_number INTEGER,
    result INTEGER,
    error_type TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS chain_requests_queue ON chain_requests (node, state, id)
"""

_CHAIN_REQUESTS_BY_RECORDER = """
CREATE INDEX IF NOT EXISTS chain_requests_recorder ON chain_requests (recorder, state, id)
"""

#: Every step, in order; the schema's version is how many of them a database has had.
STEPS: tuple[Step, ...] = (
    Create(_INSTANCES),  # 1: rows, batches, batch members
    AddColumn("instances", "strikes", "INTEGER NOT NULL DEFAULT 0"),  # 2
    AddColumn("instances", "parked_stage", "TEXT"),  # 3
    AddColumn("instances", "spool_sha256", "BLOB"),  # 4
    Create(_COMMITMENTS),  # 5: Storage Commitment requests
    AddColumn("commitments", "tls", "INTEGER NOT NULL DEFAULT 0"),  # 6
    AddColumn("instances", "anchored_at", "REAL"),  # 7: when the anchor's receipt came
    # 8, 9: the worker process that holds the row (its id) and until when (epoch seconds)
    AddColumn("instances", "claimed_by", "TEXT"),
    AddColumn("instances", "claim_until", "REAL NOT NULL DEFAULT 0"),
    # 10: the gateway node that received a Storage Commitment request: it alone reports it
    AddColumn("commitments", "node", "TEXT"),
    # 11: the gateway node that received the row: its spool (and sealed dir) hold the bytes
    AddColumn("instances", "received_by", "TEXT"),
    # notify: 12: the alerts' outbox (webhooks, syslog) and each alert log's high-water mark
    Create(_NOTIFY),
    # 13 (receipts part): the append-only log's leaves, one per batch on the contract
    Create(_LOG_LEAVES),
    # 14 (trail part): the access trail and its batches
    Create(_ACCESS_LOG),
    # 15 (grants part): grants of read access, as written to the chain (which is the record)
    Create(_GRANTS),
    # 16 (erasure part): study keys, the erasure log, the retention list
    Create(_ERASURE),
    # 17-20 (erasure2 part, kept together): the erasure a row is named in (the pipeline erases it at its
    # next stage); each node's shedding of its local copies
    AddColumn("instances", "erase_plan", "TEXT"),
    Create(_ERASURE_SHED),
    # an access entry's keyed leaf inputs, kept when an erasure
    # drops its plaintext UIDs (the trail's roots stay recomputable)
    AddColumn("access_log", "leaf_record_key", "BLOB"),
    AddColumn("access_log", "leaf_study_key", "BLOB"),
    # 21, 22 (siwe part): grants made on chain imported from a cursor; Sign-In with Ethereum
    AddColumn("grants", "revoke_block", "INTEGER"),
    Create(_SIWE),
    # grants2 part (keep these together): 23: the id of the token a grant binds (NULL: a row
    # from before ids, read as ``name:<grantee>``); 24: the grant a new one replaced
    # (extended or narrowed)
    AddColumn("grants", "grantee_id", "TEXT"),
    AddColumn("grants", "replaces", "INTEGER"),
    # 25: the chain-request queue (the anchoring worker sends the API's and CLI's writes)
    Create(_CHAIN_REQUESTS),
    # 26, 27 (owner routing, keep together): the recorder account a request must be sent by
    # (an erasure's retirement of a record another node anchored goes to that node's worker)
    AddColumn("chain_requests", "recorder", "TEXT"),
    Create(_CHAIN_REQUESTS_BY_RECORDER),
    # 28 (pgread part, #14): on PostgreSQL, triggers on ``instances`` NOTIFY the Orthanc
    # plugin's evidence cache of every change its view shows (gateway/index/evidence_view.py).
    # A later step that adds a column to the view runs TRIGGER_STATEMENTS again.
    PostgresOnly(TRIGGER_STATEMENTS),
)

#: The version this code writes and reads.
LATEST = len(STEPS)

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def added_columns(table: str) -> dict[str, str]:
    """Columns of ``table`` that steps added after it was created, with the value an older
    database's row reads as (``0`` for ``NOT NULL DEFAULT 0``, else ``NULL``)."""
    return {
        step.name: "0" if "DEFAULT 0" in step.declaration else "NULL"
        for step in STEPS
        if isinstance(step, AddColumn) and step.table == table
    }


def version(db: Connection) -> int:
    """The schema version of the database (0: older than ``schema_version``, or empty)."""
    if not db.columns("schema_version"):
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def check(found: int, where: str) -> None:
    """Refuse a schema newer than this code's."""
    if found > LATEST:
        raise IndexSchemaTooNew(
            f"the index at {where} has schema version {found}; this gateway knows up to"
            f" {LATEST}: upgrade the gateway (it will not run on a newer schema)"
        )


def migrate(db: Connection, *, where: str, to: int = LATEST) -> int:
    """Run the steps the database lacks, up to version ``to``, in one transaction.

    Returns the version found before. Two gateways opening one database at once run the
    steps once: the second waits for the first's transaction, then finds nothing to do.

    Raises
    ------
    IndexSchemaTooNew
        The database's version is above :data:`LATEST`.
    """
    db.begin()
    try:
        db.serialize(b"schema_version")
        db.execute(db.ddl(_VERSION_TABLE))
        found = version(db)
        check(found, where)
        for step in STEPS[found:to]:
            _run(db, step)
        if to > found:
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (to,))
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return found


def _run(db: Connection, step: Step) -> None:
    if isinstance(step, PostgresOnly):
        if db.engine == "postgresql":
            for statement in step.statements:
                db.execute(statement)
    elif isinstance(step, Create):
        for statement in step.sql.split(";"):
            if statement.strip():
                db.execute(db.ddl(statement))
    elif step.name not in db.columns(step.table):
        db.execute(db.ddl(f"ALTER TABLE {step.table} ADD COLUMN {step.name} {step.declaration}"))
