//! Redis stopped for 30 s under a running consumer, and back empty (this
//! Redis keeps nothing on disk, so the restart is also a flush): the live
//! values and the REST answers are rebuilt from the durable state, and a
//! WebSocket client is told of what it missed (its channel skips a `seq`)
//! instead of being left in silence.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{self, delivered, Names};
use crate::oracle;
use crate::stack::{time_until, Stack, ONE_AT_A_TIME};
use crate::support::http;

const OUTAGE: Duration = Duration::from_secs(30);

/// Frames of `token:ETH` a WebSocket client receives: (when, seq).
type Seen = Arc<Mutex<Vec<(Instant, u64)>>>;

/// A client subscribed to `token:ETH` that records every frame's `seq`.
async fn watch_eth(port: u16) -> Seen {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await.unwrap();
    socket.send(Message::text(r#"{"op":"subscribe","channels":["token:ETH"]}"#)).await.unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else { continue };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let (Some("token:ETH"), Some(seq)) = (frame["channel"].as_str(), frame["seq"].as_u64()) {
                record.lock().unwrap().push((Instant::now(), seq));
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_for_30_s_and_back_empty_is_rebuilt_from_postgres() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut stack = Stack::start().await;
    let names = Names::new("faults-redis");
    let mut consumer = crate::consumer(&stack, &names, "a");
    let port = helpers::logged_port(&consumer).await;
    let producing = {
        let (brokers, names) = (stack.brokers(), names.clone());
        async move { helpers::produce(&brokers, &names, crate::swaps(3000), &crate::stream("6000")).await }
    };
    let producing = tokio::spawn(producing);
    let seen = watch_eth(port).await;
    crate::progress(&stack, &names, Duration::from_secs(60)).await;
    stack.stop_redis().await;
    tokio::time::sleep(OUTAGE).await;
    stack.start_redis().await;
    let back = Instant::now();
    let truth = producing.await.unwrap();

    assert!(consumer.child.try_wait().unwrap().is_none(), "the consumer was not restarted: {}", consumer.log_text());
    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let expected = truth.expected.clone();
    let rebuilt = time_until("Redis is rebuilt to the ground truth", Duration::from_secs(60), || {
        let (stack, names, expected) = (&stack, &names, expected.clone());
        async move { oracle::from_redis(stack, names).await == expected }
    })
    .await;
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    // The client heard again after the outage, and was told it missed frames.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(at, _)| *at > back), "frames after Redis was back: {seen:?}");
    let skips = seen.windows(2).filter(|w| w[1].1 > w[0].1 + 1).count();
    assert!(skips > 0, "a skipped seq tells the client of the outage: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1].1 > w[0].1), "seq only grows");
    let (status, body) = http::get(port, "/v1/tokens/ETH/stats").await;
    assert_eq!(status, 200, "REST answers again: {body}");
    let rest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rest["totals"]["swaps"], truth.expected["tokens"]["ETH"]["totals"]["swaps"], "REST after the rebuild");
    oracle::report(
        "Redis stopped 30 s, back empty (a flush)",
        started.elapsed(),
        &truth,
        counts,
        &format!("Redis equal to the truth {:.1} s after the stream was stored", rebuilt.as_secs_f64()),
    );
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
