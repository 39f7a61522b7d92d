"""Offline tools around the API: a synthetic network generator (``simulate``), a bulk importer
(JSON Lines, CSV, vCard, iCalendar) and an exporter (JSON Lines, CSV, Parquet)."""
