-- Signed preview URLs (`GET /sandbox/{id}/ports/{port}/signed-preview-url`): only the sha256 of
-- each token is kept, with the sandbox and port it opens and when it stops working. Rows go
-- with their sandbox (foreign keys are on).
CREATE TABLE preview_tokens (
    token_hash  TEXT PRIMARY KEY,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    port        INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX preview_tokens_sandbox ON preview_tokens(sandbox_id);
CREATE INDEX preview_tokens_expiry ON preview_tokens(expires_at);
