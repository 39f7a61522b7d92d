"""The HTTP API front ends use: writes go to the owning service over NATS request/reply,
reads come from the PostgreSQL read models."""
