"""The ``tieline`` command line: run everything (``tieline up``) and record or read events."""
