-- Snapshots built from a Dockerfile (`buildInfo`): the Dockerfile text and the hashes of the
-- uploaded context archives, kept so that an interrupted build can be run again at start.
ALTER TABLE snapshots ADD COLUMN build_dockerfile TEXT;
ALTER TABLE snapshots ADD COLUMN build_context_hashes TEXT; -- JSON list

-- Sandboxes created from an `Image` carry their own build (no snapshot record).
ALTER TABLE sandboxes ADD COLUMN build_dockerfile TEXT;
ALTER TABLE sandboxes ADD COLUMN build_context_hashes TEXT; -- JSON list
