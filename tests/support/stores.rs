//! Removing what a benchmark run left in PostgreSQL and Redis under its id
//! (its schema and key prefix): a run at 100,000 tokens leaves gigabytes of
//! expiring keys behind, which the next runs on the machine would pay for.

use swapstream::config::Settings;
use swapstream::storage::postgres::PgStore;
use swapstream::storage::redis::RedisStore;

/// Drops schema `id` and unlinks every Redis key under `id:`, on the
/// default local services, with the stores' own clean-ups. Best effort:
/// what fails is printed.
pub async fn forget(id: &str) {
    let vars = [("SWAPSTREAM_POSTGRES_SCHEMA", id), ("SWAPSTREAM_REDIS_KEY_PREFIX", id)];
    let settings = match Settings::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned()))) {
        Ok(settings) => settings,
        Err(e) => return eprintln!("cannot clear the stores of {id}: {e:#}"),
    };
    let dropped = match PgStore::connect(&settings.postgres, 0, &swapstream::telemetry::discard()).await {
        Ok(pg) => pg.drop_schema().await,
        Err(e) => Err(e),
    };
    if let Err(e) = dropped {
        eprintln!("cannot drop schema {id}: {e:#}");
    }
    let removed = match RedisStore::connect(&settings.redis, 0).await {
        Ok(redis) => redis.delete_all().await,
        Err(e) => Err(e),
    };
    match removed {
        Ok(n) => eprintln!("removed schema {id} and {n} Redis keys"),
        Err(e) => eprintln!("cannot remove the Redis keys of {id}: {e:#}"),
    }
}
