"""Projection workers: consume the log of record and build PostgreSQL read models.

Pure functions (``changes``, ``strength``) decide what an event changes; the ``store`` applies
a whole fetched batch in one transaction together with the stream-sequence checkpoint; the
``worker`` fetches, commits, and only then acknowledges.
"""
