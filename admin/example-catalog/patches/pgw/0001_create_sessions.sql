-- REST sessions of the product gateway.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    customer INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
