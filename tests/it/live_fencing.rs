//! Redis keeps a partial's values only from the latest position of its
//! partition (ownership epoch, then offset): a paused instance that wakes up
//! after its partitions moved cannot write older values over the new
//! owner's.

use std::collections::HashMap;
use swapstream::domain::aggregate::Interval;

use swapstream::domain::partial::{AggKey, PartialDelta, TotalsPartial};
use swapstream::domain::TokenSymbol;
use swapstream::metrics::METRICS;
use swapstream::storage::redis::{Position, RedisStore};
use swapstream::stream::{PartialChange, Tp};

use crate::helpers::Names;

/// A change of the ETH partial of partition 0, and that partition's position.
fn write(swaps: u64, epoch: i64, offset: i64) -> (PartialChange, HashMap<Tp, Position>) {
    let tp = Tp::new("swaps.ETH", 0);
    let delta = PartialDelta {
        totals: TotalsPartial { swaps, ..TotalsPartial::default() },
        pending: 0,
        candles: Vec::new(),
        new_recent: Vec::new(),
        history: Vec::new(),
    };
    let change = PartialChange { key: AggKey::Token(TokenSymbol::parse("ETH").unwrap()), tp: tp.clone(), delta };
    (change, HashMap::from([(tp, Position { epoch, offset })]))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_is_kept_only_from_the_latest_position_of_its_partition() {
    let names = Names::new("it-live-fencing");
    let store = RedisStore::connect(&names.settings(&[]).redis, 100).await.unwrap();
    let key = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
    let stored = || async { store.merged(&key, &Interval::ALL, 0).await.unwrap().totals.swaps };

    // (write, epoch, offset, swaps Redis holds afterwards)
    let steps = [
        (10, 1, 100, 10), // first write
        (12, 1, 120, 12), // later offset, same owner
        (11, 1, 110, 12), // older offset: fenced
        (20, 2, 90, 20),  // new owner (higher epoch), even at a lower offset
        (13, 1, 130, 20), // the old owner, later offset but older epoch: fenced
        (20, 2, 90, 20),  // the same position again (a replay): written, same values
    ];
    let fenced_before = METRICS.live_writes_fenced.get();
    for (swaps, epoch, offset, expected) in steps {
        let (change, positions) = write(swaps, epoch, offset);
        store.write(&[change], &positions, &[]).await.unwrap();
        assert_eq!(stored().await, expected, "after writing {swaps} at epoch {epoch}, offset {offset}");
    }
    assert_eq!(METRICS.live_writes_fenced.get() - fenced_before, 2, "two writes fenced");
    store.delete_all().await.unwrap();
}
