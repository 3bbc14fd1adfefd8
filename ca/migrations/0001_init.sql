-- Warden CA schema. One file for SQLite and PostgreSQL: only types and syntax both share.

-- Every certificate the CA has issued.
CREATE TABLE issued_certs (
    serial      TEXT PRIMARY KEY,       -- lowercase hex
    spiffe_id   TEXT NOT NULL,
    not_before  BIGINT NOT NULL,        -- unix seconds
    not_after   BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,          -- SHA-256 of the DER, hex
    requester   TEXT NOT NULL,          -- authenticated caller identity
    node        TEXT,                   -- node name when a node asked
    peer_addr   TEXT NOT NULL,
    issued_at   BIGINT NOT NULL
);
-- Serials are time-ordered (see pki::authority::random_serial), so the primary key is
-- appended to. No index on spiffe_id: one would dirty a scattered B-tree page per
-- certificate, and the hot path never reads by identity.

-- Registration entries: which node may obtain which identity, for which local callers.
CREATE TABLE entries (
    id          TEXT PRIMARY KEY,
    parent_id   TEXT NOT NULL,
    spiffe_id   TEXT NOT NULL,
    selectors   TEXT NOT NULL,          -- JSON array of "type:value", sorted
    created_at  BIGINT NOT NULL
);
CREATE INDEX entries_parent_spiffe ON entries (parent_id, spiffe_id);

-- One-time node join tokens; only their SHA-256 is kept.
CREATE TABLE join_tokens (
    token_hash  TEXT PRIMARY KEY,
    node_name   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Append-only, hash-chained audit log.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    ts_nanos    BIGINT NOT NULL,
    event       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    identity    TEXT NOT NULL,
    requester   TEXT NOT NULL,
    peer_addr   TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
-- Only append-ordered indexes: the log is written on every request and read rarely.
-- Filters by identity or outcome scan the rows selected by time (`--since`).
CREATE INDEX audit_log_ts ON audit_log (ts_nanos);

-- The chain head; its row is locked by each writer, serialising CA replicas.
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
