//! A reconnect storm: 5,000 WebSocket clients connecting to one instance at
//! once (as after a restart behind a load balancer), each subscribing. Every
//! one is served, or refused with a clear status and a retry hint; the
//! instance keeps running and its memory stays bounded.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{self, Names};
use crate::stack::{Stack, ONE_AT_A_TIME};

const CLIENTS: usize = 5000;
/// Resident memory the instance may reach with all of them (measured: a
/// consumer idles at about 60 MiB, a connection takes about 16 KiB).
const RSS_LIMIT_MIB: u64 = 600;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Connected and got its `subscribed` frame.
    Served,
    /// HTTP status of the refused upgrade, and whether it said when to retry.
    Refused(u16, bool),
    /// Anything else: a failure the client could not act on.
    Failed(String),
}

async fn client(port: u16) -> (Outcome, Option<impl Sized>) {
    let connecting = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws"));
    let mut socket = match tokio::time::timeout(Duration::from_secs(60), connecting).await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(WsError::Http(response))) => {
            let retry = response.headers().contains_key("retry-after");
            return (Outcome::Refused(response.status().as_u16(), retry), None);
        }
        Ok(Err(e)) => return (Outcome::Failed(e.to_string()), None),
        Err(_) => return (Outcome::Failed("no answer to the upgrade within 60 s".into()), None),
    };
    if let Err(e) = socket.send(Message::text(r#"{"op":"subscribe","channels":["token:ETH"]}"#)).await {
        return (Outcome::Failed(e.to_string()), None);
    }
    let subscribed = async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                if text.contains("\"subscribed\"") {
                    return true;
                }
            }
        }
        false
    };
    match tokio::time::timeout(Duration::from_secs(60), subscribed).await {
        Ok(true) => (Outcome::Served, Some(socket)),
        Ok(false) => (Outcome::Failed("closed before its subscription".into()), None),
        Err(_) => (Outcome::Failed("no subscription within 60 s".into()), None),
    }
}

fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kib / 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_clients_reconnecting_at_once_are_served_or_told_to_retry() {
    let _one = ONE_AT_A_TIME.lock().await;
    // This process holds the clients' ends: one descriptor each.
    rlimit::increase_nofile_limit(4 * CLIENTS as u64).unwrap();
    let stack = Stack::start().await;
    let names = Names::new("faults-storm");
    crate::produce(&stack, &names, 200, "max").await;
    let mut vars = stack.vars(&names);
    // The clients come from one address here; behind a load balancer they
    // would come from thousands: neither per-address limit is what is tested.
    vars.push(("SWAPSTREAM_WS_MAX_CONNS_PER_IP", (2 * CLIENTS).to_string()));
    vars.push(("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0".to_owned()));
    let mut consumer = helpers::Child::spawn(&format!("{}-consumer", names.schema), &["consumer"], &vars);
    let port = helpers::logged_port(&consumer).await;
    crate::progress(&stack, &names, Duration::from_secs(60)).await;

    let started = Instant::now();
    let results = futures::future::join_all((0..CLIENTS).map(|_| client(port))).await;
    let took = started.elapsed();
    let rss = rss_mib(consumer.pid());
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (outcome, _) in &results {
        *outcomes.entry(format!("{outcome:?}")).or_default() += 1;
    }
    println!(
        "RELIABILITY | {CLIENTS} WebSocket clients connecting at once | {:.0} s | - | - | - | {outcomes:?}, RSS {rss} MiB |",
        took.as_secs_f64()
    );
    for (outcome, _) in &results {
        match outcome {
            Outcome::Served => {}
            Outcome::Refused(status, retry) => {
                assert!(matches!(status, 429 | 503) && *retry, "a refusal says when to retry: {outcome:?}")
            }
            Outcome::Failed(why) => panic!("a client was neither served nor refused clearly: {why} ({outcomes:?})"),
        }
    }
    assert!(consumer.child.try_wait().unwrap().is_none(), "the instance survived: {}", consumer.log_text());
    assert!(rss <= RSS_LIMIT_MIB, "RSS {rss} MiB with {CLIENTS} clients");
    drop(results);
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
