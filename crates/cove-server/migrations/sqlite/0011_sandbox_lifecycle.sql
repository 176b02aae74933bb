-- Sandbox lifecycle automation (service/lifecycle.rs): when a sandbox was last active
-- (toolbox calls, running session commands, refresh_activity, state changes; flushed from
-- memory now and then and at every transition) and, for an archived sandbox, the content
-- store blob holding its compressed disk. `archive_digest` is a GC root: the blob is kept
-- while the row names it. The row goes with its sandbox.
CREATE TABLE sandbox_lifecycle (
    sandbox_id        TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    last_activity_at  INTEGER NOT NULL,
    archive_digest    TEXT,
    archive_size      INTEGER
);
