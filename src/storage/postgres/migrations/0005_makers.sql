-- Each candle's distinct makers, as the sketch `domain::makers` stores
-- (empty: none seen). Rows written before this migration count no makers.
ALTER TABLE {schema}.candles ADD COLUMN IF NOT EXISTS makers bytea NOT NULL DEFAULT ''::bytea;
