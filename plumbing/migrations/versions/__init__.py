"""The revisions, oldest first by number; each names its predecessor in ``down_revision``."""
