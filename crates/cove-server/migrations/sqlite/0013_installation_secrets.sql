-- Secrets every node of an installation shares (issue 18, forward.rs): `node-token` keys the
-- HMAC of the node tokens that forwarded requests carry. Written once, by the first node to
-- start (an insert that keeps an existing value), as hex. Only nodes read it.
CREATE TABLE installation_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
