-- Nodes (issue 18, service/nodes.rs): every `cove server` with --database-url registers
-- itself here and heartbeats; a node whose heartbeat is older than the limit is marked
-- `lost` by any other node. `address` is the node's API base URL as other nodes reach it;
-- capacity is what the machine has (free capacity is for placement, a later step).
-- `state`: ready | draining | lost. Times are Unix milliseconds.
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    region        TEXT NOT NULL,
    address       TEXT NOT NULL,
    cpus          INTEGER NOT NULL,
    memory_mib    INTEGER NOT NULL,
    disk_mib      INTEGER NOT NULL,
    gpus          INTEGER NOT NULL,
    state         TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    version       TEXT NOT NULL
);

-- The node a sandbox lives on (its disk, its processes). NULL: this installation's only
-- node (every row written before nodes, and every row of a server without --database-url).
ALTER TABLE sandboxes ADD COLUMN node_id TEXT;
CREATE INDEX sandboxes_node ON sandboxes(node_id);
