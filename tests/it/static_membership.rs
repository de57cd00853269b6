//! Static group membership (KIP-345) on Apache Kafka: a consumer killed with
//! SIGKILL and started again under its own `SWAPSTREAM_INSTANCE_ID` gets its
//! partitions back at once, and the other member's are not touched; one that
//! comes back under another id sees the dead member's partitions move only
//! after the session timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::helpers::{self, eventually, require_broker, Child, Names};

const TOKENS: &str = "ETH,BTC,USDC,SOL";
/// Long enough that "at once" and "after the session timeout" cannot be confused.
const SESSION: Duration = Duration::from_secs(15);

/// (topic, partition) -> (owner, ownership epoch), as claimed in PostgreSQL
/// by each assignment.
type Ownership = BTreeMap<(String, i32), (String, i64)>;

async fn ownership(client: &tokio_postgres::Client, names: &Names) -> Ownership {
    let sql = format!("SELECT topic, partition, coalesce(owner, ''), owner_epoch FROM {}.offsets", names.schema);
    let rows = client.query(sql.as_str(), &[]).await.unwrap_or_default();
    rows.iter().map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3)))).collect()
}

fn owned_by<'a>(all: &'a Ownership, owner: &str) -> BTreeMap<&'a (String, i32), i64> {
    all.iter().filter(|(_, (o, _))| o == owner).map(|(tp, (_, epoch))| (tp, *epoch)).collect()
}

struct Group {
    names: Names,
    brokers: String,
}

impl Group {
    fn id(&self, member: &str) -> String {
        format!("{}-{member}", self.names.schema)
    }

    fn member(&self, member: &str) -> Child {
        let mut vars = self.names.vars(&self.brokers);
        vars.push(("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".into()));
        vars.push(("SWAPSTREAM_INSTANCE_ID", self.id(member)));
        vars.push(("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", SESSION.as_millis().to_string()));
        Child::spawn(&self.id(member), &["consumer"], &vars)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_static_member_gets_its_partitions_back_at_once_and_a_new_one_after_the_session_timeout() {
    let group = Group { names: Names::new("it-static"), brokers: require_broker() };
    let names = &group.names;
    // Topics first (4 tokens x 4 partitions), then a stream that outlasts the test.
    helpers::produce(&group.brokers, names, 40, &helpers::stream_vars(TOKENS, "max", 1000)).await;
    let producing = tokio::spawn({
        let (brokers, names) = (group.brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 9000, &helpers::stream_vars(TOKENS, "6000", 1000)).await }
    });
    let client = &helpers::pg().await;
    let ids = (group.id("a"), group.id("b"));
    let (a_id, b_id) = (ids.0.as_str(), ids.1.as_str());

    let mut a = group.member("a");
    let mut b = group.member("b");
    eventually("a and b share all 16 partitions", Duration::from_secs(60), move || async move {
        let all = ownership(client, names).await;
        let (a, b) = (owned_by(&all, a_id).len(), owned_by(&all, b_id).len());
        all.len() == 16 && a > 0 && b > 0 && a + b == 16
    })
    .await;
    let before = ownership(client, names).await;
    let (a_before, b_before) = (&owned_by(&before, a_id), owned_by(&before, b_id));

    // 1. Killed and started again under the same id: a claims the same
    //    partitions again (a new epoch each) well within the session timeout.
    a.kill9().await;
    let restarted = Instant::now();
    let mut a = group.member("a");
    eventually("a has its own partitions back", Duration::from_secs(10), move || async move {
        let now = ownership(client, names).await;
        let a_now = owned_by(&now, a_id);
        a_now.len() == a_before.len() && a_now.iter().all(|(tp, epoch)| a_before.get(tp).is_some_and(|e| epoch > e))
    })
    .await;
    let took = restarted.elapsed();
    assert!(took < SESSION / 2, "a got its partitions back after {took:?}, not at once");
    let resumed_from = helpers::checkpointed(client, names).await;
    eventually("processing resumes", Duration::from_secs(10), move || async move {
        helpers::checkpointed(client, names).await > resumed_from
    })
    .await;
    let after = ownership(client, names).await;
    assert_eq!(owned_by(&after, b_id), b_before, "b's partitions were not reassigned (same owner, same epoch)");

    // 2. Killed, and a member with another id joins: the dead member keeps
    //    its partitions until its session times out, then they move.
    a.kill9().await;
    let killed = Instant::now();
    let mut c = group.member("c");
    let moved = move || async move {
        let now = ownership(client, names).await;
        owned_by(&now, a_id).is_empty() && now.len() == 16
    };
    eventually("a's partitions move to the live members", SESSION + Duration::from_secs(45), moved).await;
    let took = killed.elapsed();
    assert!(
        took >= SESSION - Duration::from_secs(2),
        "a's partitions moved {took:?} after the kill, before its {SESSION:?} session timeout"
    );

    producing.abort();
    c.kill9().await;
    b.kill9().await;
}
