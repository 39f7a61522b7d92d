"""Process runtime helpers: embedded NATS/PostgreSQL servers for `tieline up` and the tests."""
