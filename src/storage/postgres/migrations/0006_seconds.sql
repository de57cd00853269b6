-- 1s candles are kept for the rolling windows' edges only, and deleted
-- once older than their memory retention: this index finds them by
-- partition and time.
CREATE INDEX IF NOT EXISTS candles_seconds ON {schema}.candles (topic, partition, t) WHERE interval = '1s';
