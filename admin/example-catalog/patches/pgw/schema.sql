-- portcullis-baseline: 2
-- The schema as of patch 0002, for installing an empty database in one step.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    customer INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sessions_customer ON sessions (customer);
