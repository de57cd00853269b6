-- Each checkpoint deletes its partitions' dedup rows that fell behind the
-- lateness horizon. Without this index that delete read every dedup row of
-- the partition, an hour of checkpoints, on every checkpoint.
CREATE INDEX IF NOT EXISTS dedup_expiry ON {schema}.dedup (topic, partition, max_event_ns);
