-- Candle history, one row per (key, interval, bucket, partition); merged on
-- read. A TimescaleDB hypertable when the extension is installed, a table
-- range-partitioned by month otherwise (see postgres.rs).
CREATE TABLE IF NOT EXISTS {schema}.candles (
    agg_key    text    NOT NULL,
    interval   text    NOT NULL,
    t          bigint  NOT NULL,
    topic      text    NOT NULL,
    partition  integer NOT NULL,
    open       numeric NOT NULL,
    open_at    bytea   NOT NULL,
    close      numeric NOT NULL,
    close_at   bytea   NOT NULL,
    high       numeric NOT NULL,
    low        numeric NOT NULL,
    volume_usd numeric NOT NULL,
    swaps      bigint  NOT NULL,
    buys       bigint  NOT NULL,
    PRIMARY KEY (agg_key, interval, t, topic, partition)
) {candles_partitioning};
