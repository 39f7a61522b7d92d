"""The master key and what it seals: re-sealing every value under a new key (rewrap.py)."""
