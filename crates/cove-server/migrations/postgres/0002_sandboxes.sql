-- PostgreSQL twin of sqlite/0002_sandboxes.sql. `image_digest` keeps the snapshot's image
-- alive (GC) while any sandbox uses it, even after the snapshot itself is deleted.
CREATE TABLE sandboxes (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    org_id             TEXT COLLATE "C" NOT NULL REFERENCES organizations(id),
    name               TEXT COLLATE "C" NOT NULL,
    snapshot_id        TEXT COLLATE "C",
    snapshot_name      TEXT COLLATE "C",
    image_digest       TEXT COLLATE "C" NOT NULL,
    user_name          TEXT COLLATE "C" NOT NULL,
    env                TEXT COLLATE "C" NOT NULL,      -- JSON object
    labels             TEXT COLLATE "C" NOT NULL,      -- JSON object
    public             BOOLEAN NOT NULL,
    network_block_all  BOOLEAN NOT NULL,
    privileged         BOOLEAN NOT NULL,
    region_id          TEXT COLLATE "C" NOT NULL,
    cpu                BIGINT NOT NULL,
    gpu                BIGINT NOT NULL,
    mem                BIGINT NOT NULL,
    disk               BIGINT NOT NULL,
    state              TEXT COLLATE "C" NOT NULL,
    desired_state      TEXT COLLATE "C" NOT NULL,
    error_reason       TEXT COLLATE "C",
    auto_stop          BIGINT NOT NULL,
    auto_archive       BIGINT NOT NULL,
    auto_delete        BIGINT NOT NULL,
    daemon_version     TEXT COLLATE "C",
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE INDEX sandboxes_state ON sandboxes(state);
