CREATE INDEX sessions_customer ON sessions (customer);
