-- PostgreSQL twin of sqlite/0010_general_snapshots.sql: general snapshots, made by an admin,
-- visible to every organization and changeable only by an admin key. Their names are reserved
-- for every organization.
ALTER TABLE snapshots ADD COLUMN general BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX snapshots_general ON snapshots(general) WHERE general;
