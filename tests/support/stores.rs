//! Removing what a benchmark run left in PostgreSQL and Redis under its id
//! (its schema and key prefix): a run at 100,000 tokens leaves gigabytes of
//! expiring keys behind, which the next runs on the machine would pay for.

use swapstream::config::Settings;

/// Drops schema `id` and unlinks every Redis key under `id:`, on the
/// default local services. Best effort: what fails is printed.
pub async fn forget(id: &str) {
    let settings = Settings::from_vars(Vec::<(String, String)>::new()).expect("default settings");
    match tokio_postgres::connect(settings.postgres.url.expose(), tokio_postgres::NoTls).await {
        Ok((sql, connection)) => {
            tokio::spawn(connection);
            if let Err(e) = sql.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{id}\" CASCADE")).await {
                eprintln!("cannot drop schema {id}: {e}");
            }
        }
        Err(e) => eprintln!("cannot reach PostgreSQL to drop schema {id}: {e}"),
    }
    match unlink_prefix(&settings.redis.urls.expose()[0], id).await {
        Ok(n) => eprintln!("removed schema {id} and {n} Redis keys"),
        Err(e) => eprintln!("cannot remove the Redis keys of {id}: {e}"),
    }
}

async fn unlink_prefix(url: &str, prefix: &str) -> redis::RedisResult<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let (mut cursor, mut removed) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            removed += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
