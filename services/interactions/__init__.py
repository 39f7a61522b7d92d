"""The interactions service: records meetings, follow-ups, introductions, help and ratings."""
