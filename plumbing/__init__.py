"""The ground floor: plumbing shared by the write side and the read side.

Settings, logging, NATS and PostgreSQL connections, subject names, crypto helpers and retry
policies. It imports nothing of tieline but ``tieline.events_schema``.
"""
