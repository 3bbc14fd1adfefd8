-- Revoked certificates (`warden cert revoke`, `warden entry delete`): what the CRLs
-- list until the certificate expires.
CREATE TABLE revocations (
    serial      TEXT PRIMARY KEY,       -- lowercase hex
    spiffe_id   TEXT NOT NULL,
    authority   TEXT NOT NULL,          -- key identifier of the signer, hex
    not_after   BIGINT NOT NULL,
    reason      TEXT NOT NULL,          -- RFC 5280 reason name
    revoked_at  BIGINT NOT NULL
);

-- Identities revoked as a whole: no certificate is issued for them until
-- `warden cert unrevoke`.
CREATE TABLE revoked_identities (
    spiffe_id   TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL
);
