-- The part of each partial's and candle's volume that buys moved (sells
-- moved the rest). Rows written before this migration count as all sells'.
ALTER TABLE {schema}.partials ADD COLUMN IF NOT EXISTS buy_volume_usd numeric NOT NULL DEFAULT 0;
ALTER TABLE {schema}.candles ADD COLUMN IF NOT EXISTS buy_volume_usd numeric NOT NULL DEFAULT 0;
