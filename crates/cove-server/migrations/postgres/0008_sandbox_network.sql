-- PostgreSQL twin of sqlite/0008_sandbox_network.sql: a sandbox's outbound network policy
-- beyond `network_block_all` (canonical comma-separated form, NULL when none) and the sandbox
-- it was linked to at create.
ALTER TABLE sandboxes ADD COLUMN network_allow_list TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN domain_allow_list TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN linked_sandbox_id TEXT COLLATE "C";
