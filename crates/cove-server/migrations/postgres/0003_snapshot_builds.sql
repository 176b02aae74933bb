-- PostgreSQL twin of sqlite/0003_snapshot_builds.sql: snapshots built from a Dockerfile
-- (`buildInfo`) keep the Dockerfile text and the hashes of the uploaded context archives, so
-- that an interrupted build can be run again at start.
ALTER TABLE snapshots ADD COLUMN build_dockerfile TEXT COLLATE "C";
ALTER TABLE snapshots ADD COLUMN build_context_hashes TEXT COLLATE "C"; -- JSON list

-- Sandboxes created from an `Image` carry their own build (no snapshot record).
ALTER TABLE sandboxes ADD COLUMN build_dockerfile TEXT COLLATE "C";
ALTER TABLE sandboxes ADD COLUMN build_context_hashes TEXT COLLATE "C"; -- JSON list
