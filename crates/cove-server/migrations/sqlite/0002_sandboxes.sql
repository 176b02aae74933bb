-- Sandboxes. `image_digest` keeps the snapshot's image alive (GC) while any sandbox uses it,
-- even after the snapshot itself is deleted.
CREATE TABLE sandboxes (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES organizations(id),
    name               TEXT NOT NULL,
    snapshot_id        TEXT,
    snapshot_name      TEXT,
    image_digest       TEXT NOT NULL,
    user_name          TEXT NOT NULL,
    env                TEXT NOT NULL,      -- JSON object
    labels             TEXT NOT NULL,      -- JSON object
    public             INTEGER NOT NULL,
    network_block_all  INTEGER NOT NULL,
    privileged         INTEGER NOT NULL,
    region_id          TEXT NOT NULL,
    cpu                INTEGER NOT NULL,
    gpu                INTEGER NOT NULL,
    mem                INTEGER NOT NULL,
    disk               INTEGER NOT NULL,
    state              TEXT NOT NULL,
    desired_state      TEXT NOT NULL,
    error_reason       TEXT,
    auto_stop          INTEGER NOT NULL,
    auto_archive       INTEGER NOT NULL,
    auto_delete        INTEGER NOT NULL,
    daemon_version     TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE INDEX sandboxes_state ON sandboxes(state);
