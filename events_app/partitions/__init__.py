"""The events table's range partitions on PostgreSQL (docs/operations.md, "Partitions").

`upkeep`: the partitions' names and ranges, creating them ahead, listing them, the lock they share
with retention. `conversion`: the chunked conversion of an unpartitioned table (migration 0017,
`manage.py event_partitions --convert`). SQLite keeps a plain table: everything here is a no-op
there.
"""
