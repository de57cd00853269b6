-- Offsets checkpoint: where each partition resumes, its event-time
-- watermark, and an ownership epoch that fences out a previous owner.
CREATE TABLE IF NOT EXISTS {schema}.offsets (
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint,
    watermark_ns bigint,
    owner_epoch  bigint  NOT NULL DEFAULT 0,
    owner        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- One row per (token or pair, partition): totals, last price and pending
-- gauge, as absolute values.
CREATE TABLE IF NOT EXISTS {schema}.partials (
    agg_key       text    NOT NULL,
    topic         text    NOT NULL,
    partition     integer NOT NULL,
    volume_usd    numeric NOT NULL,
    swaps         bigint  NOT NULL,
    buys          bigint  NOT NULL,
    first_seen_ns bigint,
    last_price    numeric,
    last_at       bytea,
    pending       bigint  NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agg_key, topic, partition)
);

-- Swap ids still inside the lateness bound, one compact row per
-- partition and checkpoint.
CREATE TABLE IF NOT EXISTS {schema}.dedup (
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    seq          bigint  NOT NULL,
    max_event_ns bigint  NOT NULL,
    changes      bytea   NOT NULL,
    PRIMARY KEY (topic, partition, seq)
);

-- The most recent confirmed swaps per (token or pair, partition), newest by
-- event order `at`; pruned to the configured count.
CREATE TABLE IF NOT EXISTS {schema}.recent_swaps (
    agg_key   text    NOT NULL,
    topic     text    NOT NULL,
    partition integer NOT NULL,
    at        bytea   NOT NULL,
    swap      bytea   NOT NULL,
    PRIMARY KEY (agg_key, topic, partition, at)
);
