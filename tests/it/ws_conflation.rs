//! A burst on a channel (a restart, a lag, a new topic) against the real
//! consumer process, broker and Redis: clients that read keep their
//! connection and get every swap either as a frame or counted in a
//! `skipped` frame; a client that stops reading is still evicted within the
//! write deadline.

use std::time::{Duration, Instant};

use crate::helpers::{self, eventually, require_broker, Names};
use crate::websocket::{
    consumer_vars, expected_states, metric, reads_to_its_end, stalled_client, start_consumer, stream_vars, Client,
    Received,
};

const BURST: u32 = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_conflates_lagging_readers_instead_of_evicting_them_and_a_stalled_client_still_goes() {
    let brokers = require_broker();
    let names = Names::new("it-ws-conflate");
    let deadline = Duration::from_millis(1000);
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.extend([
        ("SWAPSTREAM_WS_WRITE_DEADLINE_MS", deadline.as_millis().to_string()),
        ("SWAPSTREAM_WS_SEND_BUFFER_BYTES", "16384".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    // One client reads as fast as it can; one reads all the time, but about
    // 500 frames a second through a small window, far slower than the burst
    // comes; one subscribes and never reads again.
    let mut fast = Client::connect(port).await;
    fast.subscribe(&["token:ETH"]).await;
    let mut fast = fast.drain();
    let mut lagging = Client::connect_with_receive_buffer(port, 16384).await;
    lagging.subscribe(&["token:ETH"]).await;
    let mut lagging = lagging.drain_paced(1, Duration::from_millis(2));
    let stalled = stalled_client(port, "token:ETH");
    eventually("three sessions", Duration::from_secs(10), || async move {
        metric(port, "swapstream_ws_sessions ").await == 3.0
    })
    .await;

    // Act: 10,000 swaps as fast as the producer goes.
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, BURST, &stream_vars("max")).await }
    });

    // Assert: the stalled client is gone soon after the burst reaches the
    // clients: its socket has to fill first (how fast depends on how fast
    // the producer gets the burst out on a busy machine), then the write
    // deadline runs, then the sweep and the metric scrape.
    let mut fast_got = Received::new();
    let first = fast.frame().await;
    fast_got.take(&first, "token:ETH", "ETH");
    let flowing = Instant::now();
    eventually("the stalled client is evicted", deadline + Duration::from_secs(10), || async move {
        metric(port, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await == 1.0
    })
    .await;
    println!(
        "stalled client evicted {:?} after the burst reached the clients (deadline {deadline:?})",
        flowing.elapsed()
    );
    eventually("the server drops the stalled connection", Duration::from_secs(10), || async move {
        metric(port, "swapstream_ws_sessions ").await == 2.0
    })
    .await;
    let (closed, buffered) = reads_to_its_end(stalled).await;
    assert!(closed, "the evicted client's connection is still open after {buffered} bytes");

    // Both readers stay and account for every ETH swap state of the ground
    // truth: delivered once, or counted in a skipped frame whose seq range
    // closes the numbering (checked frame by frame in `Received::take`).
    let truth = producing.await.unwrap();
    let expected = expected_states(&truth, "ETH");
    let mut lagging_got = Received::new();
    fast_got.until_final_drained(&mut fast, &truth, "token:ETH", "ETH").await;
    lagging_got.until_final_drained(&mut lagging, &truth, "token:ETH", "ETH").await;
    for (name, got) in [("fast", &fast_got), ("lagging", &lagging_got)] {
        println!(
            "{name} client: {} of {} swap states delivered, {} skipped in {} skipped frames",
            got.states.len(),
            expected.len(),
            got.skipped,
            got.skipped_frames
        );
        let strangers: Vec<_> = got.states.difference(&expected).collect();
        assert!(strangers.is_empty(), "{name}: swap states not in the ground truth: {strangers:?}");
        assert_eq!(
            got.states.len() as u64 + got.skipped,
            expected.len() as u64,
            "{name}: delivered and skipped swap states do not add up to the ground truth's"
        );
    }
    assert!(expected.len() > 5000, "a burst of {} ETH swap states", expected.len());
    assert!(lagging_got.skipped_frames >= 1, "the lagging client was never conflated");
    assert!(lagging_got.states.len() > 10, "the lagging client got swaps too");
    let conflations = metric(port, "swapstream_ws_conflations_total ").await;
    let conflated = metric(port, "swapstream_ws_conflated_frames_total ").await;
    let (lagging_skips, fast_skips) = (lagging_got.skipped_frames as f64, fast_got.skipped_frames as f64);
    assert!(conflations >= lagging_skips + fast_skips, "{conflations} conflations counted");
    assert!(conflated >= (lagging_got.skipped + fast_got.skipped) as f64, "{conflated} conflated frames counted");
    assert_eq!(metric(port, "swapstream_ws_sessions ").await, 2.0, "both readers are still connected");
    for other in ["queue_full", "queue_bytes", "total_bytes", "ping_timeout"] {
        let line = format!("swapstream_ws_evictions_total{{reason=\"{other}\"}}");
        assert_eq!(metric(port, &line).await, 0.0, "{other}");
    }
    assert_eq!(metric(port, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await, 1.0);
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_of_one_busy_channel_share_their_queued_frames_in_the_total_budget() {
    let brokers = require_broker();
    let names = Names::new("it-ws-shared");
    // Twenty readers may each hold up to a 1 MiB backlog during the burst;
    // counted per reader that would pass the 4 MiB budget many times over,
    // counted once per frame it does not.
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.extend([
        ("SWAPSTREAM_WS_QUEUE_BYTES", "1048576".into()),
        ("SWAPSTREAM_WS_QUEUE_TOTAL_BYTES", "4194304".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut client = Client::connect(port).await;
        client.subscribe(&["token:ETH"]).await;
        readers.push(client.drain());
    }

    // Act
    let truth = helpers::produce(&brokers, &names, BURST, &stream_vars("max")).await;

    // Assert: nobody evicted, and each reader accounts for every state.
    let expected = expected_states(&truth, "ETH");
    let mut skipped_frames = 0;
    for (n, reader) in readers.iter_mut().enumerate() {
        let mut got = Received::new();
        got.until_final_drained(reader, &truth, "token:ETH", "ETH").await;
        assert!(got.states.is_subset(&expected), "reader {n}: swap states not in the ground truth");
        assert_eq!(got.states.len() as u64 + got.skipped, expected.len() as u64, "reader {n}");
        skipped_frames += got.skipped_frames;
    }
    println!("20 readers, {} ETH swap states each, {skipped_frames} skipped frames in all", expected.len());
    assert_eq!(metric(port, "swapstream_ws_evictions_total{reason=\"total_bytes\"}").await, 0.0);
    assert_eq!(metric(port, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await, 0.0);
    assert_eq!(metric(port, "swapstream_ws_sessions ").await, 20.0);
    consumer.kill9().await;
}
