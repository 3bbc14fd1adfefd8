-- The authority (key identifier of its CA certificate, hex) that signed each
-- certificate: `warden ca authority revoke` refuses while an authority signed an
-- identity's current certificate. Empty for certificates issued before this column.
ALTER TABLE issued_certs ADD COLUMN authority TEXT;
