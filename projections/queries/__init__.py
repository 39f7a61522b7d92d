"""The read side's queries: every read of a read-model table goes through this package.

Modules per area (people, strength, ties, warm paths, timeline, introductions, exports,
erasure scans) own the SQL over the tables the projections write, so the services above ask
for answers, never for tables. Every query is scoped by ``workspace_id`` first: a read can
never see another workspace's rows, whatever ids it is given.
"""
