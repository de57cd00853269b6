//! Clients that stop reading or never answer pings are disconnected;
//! the others get everything.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{Client, Got};
use super::model::{expected_states, Received};
use super::raw::{reads_to_its_end, small_window_socket, stalled_client, upgrade_and_subscribe};
use super::{consumer_vars, create_topics, metric, rss_kib, start_consumer, stream_vars};
use crate::helpers::{self, eventually, require_broker, Child, Names};

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected_and_the_others_get_everything() {
    let brokers = require_broker();
    let names = Names::new("it-ws-slow");
    let deadline = Duration::from_millis(1000);
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.push(("SWAPSTREAM_WS_WRITE_DEADLINE_MS", deadline.as_millis().to_string()));
    vars.push(("SWAPSTREAM_WS_SEND_BUFFER_BYTES", "16384".into()));
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let pid = consumer.pid();

    let mut healthy = Client::connect(port).await;
    healthy.subscribe(&["token:ETH"]).await;
    let mut healthy = healthy.drain();
    // 8,000 swaps at 2,000 events/s: the stream goes on for seconds after
    // the stalled client subscribes, however late it comes on a loaded
    // machine, so its buffers fill and the write deadline can pass.
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 8000, &stream_vars("120000")).await }
    });
    // Once the channel is busy, a client subscribes and stops reading.
    let mut received = Received::new();
    while received.states.len() < 20 {
        let frame = healthy.frame().await;
        received.take(&frame, "token:ETH", "ETH");
    }
    let rss_before = rss_kib(pid);
    let stalled_at = Instant::now();
    let stalled = stalled_client(port, "token:ETH");

    let took = loop {
        // Its queue is conflated, not grown: it goes for making no progress.
        let evictions = metric(port, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await;
        if evictions >= 1.0 {
            break stalled_at.elapsed();
        }
        assert!(
            stalled_at.elapsed() < deadline + Duration::from_secs(4),
            "the stalled client was not disconnected in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("stalled client disconnected {took:?} after it stopped reading (deadline {deadline:?})");

    // Its TCP connection is really closed: the server drops it while the
    // client still does not read (a close frame alone would wait for it
    // forever), and reading drains what was buffered, then ends (EOF or
    // reset) instead of waiting for more.
    eventually("the server drops the stalled connection", Duration::from_secs(10), || async move {
        metric(port, "swapstream_ws_sessions").await == 1.0
    })
    .await;
    let (closed, buffered) = reads_to_its_end(stalled).await;
    assert!(closed, "the evicted client's connection is still open after {buffered} bytes");

    let truth = producing.await.unwrap();
    received.until_final_drained(&mut healthy, &truth, "token:ETH", "ETH").await;
    assert_eq!(received.states, expected_states(&truth, "ETH"), "the healthy client missed swaps");
    let rss_after = rss_kib(pid);
    println!("consumer RSS {rss_before} KiB before the stalled client, {rss_after} KiB at the end");
    assert!(rss_after < 400 * 1024, "RSS {rss_after} KiB");
    assert!(rss_after < rss_before + 100 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
    assert_eq!(metric(port, "swapstream_ws_sessions").await, 1.0, "only the healthy session is left");
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_total_queue_budget_the_client_with_most_waiting_goes_and_the_other_gets_everything() {
    let brokers = require_broker();
    let names = Names::new("it-ws-budget");
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.extend([
        // Neither conflation (past the per-session cap) nor the deadline
        // may act first.
        ("SWAPSTREAM_WS_WRITE_DEADLINE_MS", "60000".into()),
        ("SWAPSTREAM_WS_QUEUE_BYTES", "1073741824".into()),
        // Well above what a healthy client lags while the whole WebSocket
        // group runs on two cores (1.2 MB seen), well below what the stalled
        // one gathers from the 12,000 swaps below (about 3.8 MB).
        ("SWAPSTREAM_WS_QUEUE_TOTAL_BYTES", "2097152".into()),
        ("SWAPSTREAM_WS_SEND_BUFFER_BYTES", "16384".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut healthy = Client::connect(port).await;
    healthy.subscribe(&["token:ETH"]).await;
    let mut healthy = healthy.drain();
    let stalled = stalled_client(port, "token:ETH");
    assert_eq!(metric(port, "swapstream_ws_sessions").await, 2.0);

    // Act
    let truth = helpers::produce(&brokers, &names, 12_000, &stream_vars("120000")).await;

    // Assert: the stalled client is dropped for the budget while it still
    // does not read; the healthy one stays and gets every state.
    eventually("the stalled client is evicted for the total budget", Duration::from_secs(30), || async move {
        metric(port, "swapstream_ws_evictions_total{reason=\"total_bytes\"}").await == 1.0
            && metric(port, "swapstream_ws_sessions").await == 1.0
    })
    .await;
    assert_eq!(metric(port, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await, 0.0);
    let mut received = Received::new();
    received.until_final_drained(&mut healthy, &truth, "token:ETH", "ETH").await;
    assert_eq!(received.states, expected_states(&truth, "ETH"), "the healthy client missed swaps");
    drop(stalled);
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_a_client_that_stops_reading_is_disconnected_too() {
    let brokers = require_broker();
    let names = Names::new("it-ws-slow-tls");
    let tls = helpers::SelfSigned::localhost();
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.push(("SWAPSTREAM_WS_WRITE_DEADLINE_MS", "1000".into()));
    vars.push(("SWAPSTREAM_WS_SEND_BUFFER_BYTES", "16384".into()));
    vars.extend(tls.server_vars());
    // Topics made first, so the consumer has them from the start and the
    // swaps come as a stream, not as one catch-up once it finds the topics.
    create_topics(&names, &brokers).await;
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let plain = helpers::logged_number(&consumer, "health_port").await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(tls.client.clone(), name).unwrap();
    let mut stalled = rustls::StreamOwned::new(connection, small_window_socket(port));
    upgrade_and_subscribe(&mut stalled, port, "token:ETH");
    assert_eq!(metric(plain, "swapstream_ws_sessions").await, 1.0);
    // The subscription is live once its `subscribed` frame went out: swaps
    // before that are in its snapshot, never frames that could fill its
    // buffers.
    eventually("the stalled client's subscription is confirmed", Duration::from_secs(30), || async move {
        metric(plain, "swapstream_ws_frames_sent_total{type=\"subscribed\"}").await >= 1.0
    })
    .await;

    // Act: the channel gets busy for seconds, however slowly the consumer
    // catches up on a loaded machine, so the buffers fill; the client never
    // reads.
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 8000, &stream_vars("120000")).await }
    });

    // Assert: evicted for the write deadline, and the TLS connection really
    // closed under it.
    let waited = Instant::now();
    while metric(plain, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await < 1.0 {
        let swaps = metric(plain, "swapstream_ws_frames_sent_total{type=\"swap\"}").await;
        let pings = metric(plain, "swapstream_ws_evictions_total{reason=\"ping_timeout\"}").await;
        assert!(pings == 0.0, "the stalled TLS client went for the ping timeout instead, after {swaps} swap frames");
        assert!(waited.elapsed() < Duration::from_secs(60), "not evicted within 60 s, after {swaps} swap frames");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The server lets go while the client still does not read (a close
    // frame alone would wait for it forever), then the client sees the end.
    eventually("the server drops the stalled connection", Duration::from_secs(10), || async move {
        metric(plain, "swapstream_ws_sessions").await == 0.0
    })
    .await;
    let (closed, buffered) = reads_to_its_end(stalled).await;
    assert!(closed, "the evicted TLS client's connection is still open after {buffered} bytes");
    producing.await.unwrap();
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_never_answers_pings_is_closed_with_4000() {
    let names = Names::new("it-ws-ping");
    let vars = helpers::api_vars(
        &names,
        &[("SWAPSTREAM_WS_PING_INTERVAL_MS", "200"), ("SWAPSTREAM_WS_PING_TIMEOUT_MS", "1000")],
    );
    let mut api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = helpers::logged_port(&api).await;
    // A client library answers pings while it reads: it stays.
    let mut polite = Client::connect(port).await;
    polite.subscribe(&["token:ETH"]).await;

    // A raw peer reads everything but never answers a ping.
    let started = Instant::now();
    let silent = tokio::task::spawn_blocking(move || {
        let mut silent = stalled_client(port, "token:ETH");
        let mut received = Vec::new();
        let _ = silent.read_to_end(&mut received); // until the server closes
        (received, started.elapsed())
    });
    // Meanwhile the library client reads (and so answers pings) for longer
    // than the ping timeout.
    let (silent, polite_read) = tokio::join!(silent, polite.read(Duration::from_secs(3)));
    let (received, closed_after) = silent.unwrap();
    assert!(matches!(polite_read, Got::Timeout), "the answering client got {polite_read:?}");
    let close_4000 = received.windows(4).any(|w| w[0] == 0x88 && w[2..] == [0x0f, 0xa0]);
    assert!(close_4000, "no close frame with code 4000 in {} bytes", received.len());
    assert!(closed_after < Duration::from_secs(5), "closed only after {closed_after:?}");
    assert!(metric(port, "swapstream_ws_evictions_total{reason=\"ping_timeout\"}").await >= 1.0);

    polite.send(json!({"op": "ping"})).await;
    assert_eq!(polite.frame(Duration::from_secs(10)).await, json!({"type": "pong"}), "the answering client stays");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
