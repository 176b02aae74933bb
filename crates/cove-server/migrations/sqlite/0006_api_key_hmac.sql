-- API keys are stored as HMAC-SHA256 under the server secret <data-dir>/api-keys.key.
-- Rows written before are bare sha256: they keep 'sha256' until their key is presented
-- again (or is the configured bootstrap key at start), and are then re-hashed.
ALTER TABLE api_keys ADD COLUMN hash_scheme TEXT NOT NULL DEFAULT 'sha256';
