-- PostgreSQL twin of sqlite/0011_sandbox_lifecycle.sql: when a sandbox was last active and,
-- for an archived sandbox, the content store blob holding its compressed disk
-- (`archive_digest` is a GC root while the row names it). The row goes with its sandbox.
CREATE TABLE sandbox_lifecycle (
    sandbox_id        TEXT COLLATE "C" PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    last_activity_at  BIGINT NOT NULL,
    archive_digest    TEXT COLLATE "C",
    archive_size      BIGINT
);
