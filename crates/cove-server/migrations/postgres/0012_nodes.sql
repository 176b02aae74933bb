-- PostgreSQL twin of sqlite/0012_nodes.sql: the nodes of an installation (state ready |
-- draining | lost, heartbeat in Unix milliseconds) and the node each sandbox lives on
-- (NULL: the installation's only node, as before nodes).
CREATE TABLE nodes (
    id            TEXT COLLATE "C" PRIMARY KEY,
    region        TEXT COLLATE "C" NOT NULL,
    address       TEXT COLLATE "C" NOT NULL,
    cpus          BIGINT NOT NULL,
    memory_mib    BIGINT NOT NULL,
    disk_mib      BIGINT NOT NULL,
    gpus          BIGINT NOT NULL,
    state         TEXT COLLATE "C" NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL,
    version       TEXT COLLATE "C" NOT NULL
);

ALTER TABLE sandboxes ADD COLUMN node_id TEXT COLLATE "C";
CREATE INDEX sandboxes_node ON sandboxes(node_id);
