-- PostgreSQL twin of sqlite/0009_preview.sql: signed preview URLs keep only the sha256 of each
-- token, with the sandbox and port it opens and when it stops working. Rows go with their
-- sandbox.
CREATE TABLE preview_tokens (
    token_hash  TEXT COLLATE "C" PRIMARY KEY,
    sandbox_id  TEXT COLLATE "C" NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    port        BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX preview_tokens_sandbox ON preview_tokens(sandbox_id);
CREATE INDEX preview_tokens_expiry ON preview_tokens(expires_at);
