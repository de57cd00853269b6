//! Lists of tokens and pairs: pages in name order, after a cursor, by name
//! prefix. From this process' actors while they hold every partition, else
//! from Redis' name index, where a page is one range read whatever the
//! number of keys.

use actix_web::web::Bytes;
use chrono::Utc;
use futures::{StreamExt as _, TryStreamExt as _};

use super::{read_from, Live, ReadError};
use crate::domain::partial::AggKey;

impl Live {
    /// One page: the tokens (else pairs) whose name starts with `prefix`,
    /// after `cursor`, in name order, at most `limit`; and the cursor of the
    /// next page when there is one.
    pub async fn page(
        &self,
        tokens: bool,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AggKey>, Option<String>), ReadError> {
        if let Some(local) = self.complete_local().await {
            read_from("actors");
            let keys = local.keys();
            let (keys, next) = page(&keys, tokens, prefix, cursor, limit);
            return Ok((keys.into_iter().cloned().collect(), next));
        }
        read_from("redis");
        let mut names = self.redis.names(tokens, prefix, cursor, limit + 1).await.map_err(ReadError::redis)?;
        let more = names.len() > limit;
        names.truncate(limit);
        let next = names.last().filter(|_| more).cloned();
        Ok((names.iter().filter_map(|n| AggKey::named(tokens, n)).collect(), next))
    }

    /// The stats bodies of a page's `keys`, in order: those another reader
    /// kept and still valid in one `MGET` (single mode), the others as
    /// [`Live::stats`] gives them, many at a time (from Redis, one round trip
    /// each on the shared connection).
    pub async fn page_stats(&self, keys: &[AggKey]) -> Result<Vec<Bytes>, ReadError> {
        let kept = match self.complete_local().await {
            Some(_) => vec![None; keys.len()],
            None => self.redis.rendered_bodies(keys, Utc::now().timestamp()).await.map_err(ReadError::redis)?,
        };
        // Owned keys: a future borrowing each from the closure's argument
        // would not be `Send`, and a ranking's build is spawned.
        let bodies = keys.iter().cloned().zip(kept).map(|(key, kept)| async move {
            match kept {
                Some(body) => {
                    read_from("rendered");
                    let body = Bytes::from(body);
                    self.cache.put(&key, &body);
                    Ok(body)
                }
                None => self.stats(&key).await,
            }
        });
        futures::stream::iter(bodies).buffered(64).try_collect().await
    }
}

/// One page of a list: the keys of `tokens` kind (else pairs) whose name
/// starts with `prefix`, after `cursor`, in name order; and the cursor of
/// the next page when there is one.
fn page<'a>(
    keys: &'a [AggKey],
    tokens: bool,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
) -> (Vec<&'a AggKey>, Option<String>) {
    let mut matching: Vec<(String, &AggKey)> = keys
        .iter()
        .filter(|k| k.is_token() == tokens)
        .map(|k| (k.name(), k))
        .filter(|(n, _)| n.starts_with(prefix) && cursor.is_none_or(|after| n.as_str() > after))
        .collect();
    matching.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let more = matching.len() > limit;
    matching.truncate(limit);
    let next = more.then(|| matching.last().map(|(n, _)| n.clone())).flatten();
    (matching.into_iter().map(|(_, k)| k).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_names_without_skip_or_repeat_and_filter_by_prefix() {
        let mut keys: Vec<AggKey> = (0..250).map(|i| AggKey::parse(&format!("token:T{i:03}")).unwrap()).collect();
        keys.push(AggKey::parse("pair:ETH-USDC").unwrap());
        keys.reverse();
        let (mut seen, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let (page, next) = page(&keys, true, "", cursor.as_deref(), 100);
            seen.extend(page.iter().map(|k| k.to_string()));
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..250).map(|i| format!("token:T{i:03}")).collect();
        assert_eq!(seen, expected);
        let (tens, next) = page(&keys, true, "T01", None, 100);
        assert_eq!((tens.len(), next), (10, None));
        let (pairs, _) = page(&keys, false, "ETH-", None, 100);
        assert_eq!(pairs.len(), 1);
    }
}
