-- Signed audit checkpoints (warden_common::checkpoint): "row seq has hash", signed
-- with the CA's audit key. The one at the lowest remaining row - 1 anchors the chain
-- after old rows are pruned.
CREATE TABLE audit_checkpoints (
    seq          BIGINT PRIMARY KEY,
    hash         TEXT NOT NULL,
    time_nanos   BIGINT NOT NULL,
    trust_domain TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    signature    TEXT NOT NULL
);
