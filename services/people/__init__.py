"""The people service: records who is in a workspace's directory (person.* events)."""
