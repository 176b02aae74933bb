-- General snapshots: made by an admin, visible to every organization and changeable only by
-- an admin key (`cove image bootstrap --general` makes cove-small/medium/large from
-- `cove/sandbox:<profile>-<release>`). Their names are reserved for every organization.
ALTER TABLE snapshots ADD COLUMN general INTEGER NOT NULL DEFAULT 0;
CREATE INDEX snapshots_general ON snapshots(general) WHERE general = 1;
