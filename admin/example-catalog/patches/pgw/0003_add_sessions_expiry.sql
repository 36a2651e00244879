ALTER TABLE sessions ADD COLUMN expires_at TEXT;
