"""Adapters at the edge: NATS JetStream and PostgreSQL connections, subjects, publishing."""
