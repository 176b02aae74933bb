-- PostgreSQL twin of sqlite/0006_api_key_hmac.sql: API keys are stored as HMAC-SHA256 under
-- the server secret <data-dir>/api-keys.key. Rows written before are bare sha256 and keep
-- 'sha256' until their key is presented again, and are then re-hashed.
ALTER TABLE api_keys ADD COLUMN hash_scheme TEXT COLLATE "C" NOT NULL DEFAULT 'sha256';
