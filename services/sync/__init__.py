"""The ``sync`` service: turns a user's CalDAV calendars and CardDAV address books into events
(docs/sync.md). It records through the write-side services' command bus, like the API does."""
