-- PostgreSQL twin of sqlite/0013_installation_secrets.sql: secrets the nodes share
-- (`node-token`, the key of forwarded requests' node tokens), hex, written once.
CREATE TABLE installation_secrets (
    name   TEXT COLLATE "C" PRIMARY KEY,
    value  TEXT COLLATE "C" NOT NULL
);
