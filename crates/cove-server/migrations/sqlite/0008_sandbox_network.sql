-- A sandbox's outbound network policy beyond `network_block_all` (the SDK's
-- `networkAllowList` and `domainAllowList`, canonical comma-separated form, NULL when none)
-- and the sandbox it was linked to at create (`linkedSandbox`: the two reach each other).
ALTER TABLE sandboxes ADD COLUMN network_allow_list TEXT;
ALTER TABLE sandboxes ADD COLUMN domain_allow_list TEXT;
ALTER TABLE sandboxes ADD COLUMN linked_sandbox_id TEXT;
