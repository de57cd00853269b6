//! The WebSocket fan-out against real consumer processes, the real broker,
//! PostgreSQL and Redis: what a client receives is checked against the
//! producer's ground truth.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use swapstream::producer::ground_truth::GroundTruthFile;
use swapstream::storage::presence::{InstanceCounts, Lock, Presence};
use swapstream::storage::redis::RedisStore;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{self, delivered, eventually, require_broker, wait_checkpointed, Child, Names};

const TOKENS: &str = "ETH,BTC,USDC,SOL";

/// How often a channel may get a `stats` frame in these tests.
const STATS_INTERVAL: Duration = Duration::from_millis(200);

/// A channel without a frame for this long has delivered what it had.
const QUIET: Duration = Duration::from_secs(2);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test client: JSON text frames in and out.
pub(crate) struct Client {
    socket: Socket,
}

/// What a client read: a JSON frame, a close (code), or nothing in time.
#[derive(Debug)]
pub(crate) enum Got {
    Frame(Value),
    Closed(Option<u16>),
    Timeout,
}

impl Client {
    pub(crate) async fn connect(port: u16) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws"))
            .await
            .expect("WebSocket handshake");
        Client { socket }
    }

    /// [`Self::connect`] over a socket whose receive buffer is `bytes`, so
    /// that what the client has not read yet waits on the server's side.
    pub(crate) async fn connect_with_receive_buffer(port: u16, bytes: usize) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
        let url = format!("ws://127.0.0.1:{port}/v1/ws");
        let (socket, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("WebSocket handshake");
        Client { socket }
    }

    async fn send(&mut self, value: Value) {
        self.socket.send(Message::text(value.to_string())).await.expect("sending");
    }

    async fn read(&mut self, timeout: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Got::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Got::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Got::Frame(serde_json::from_str(&text).expect("every frame is JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => return Got::Closed(frame.map(|f| u16::from(f.code))),
                Ok(Some(Ok(_))) => {} // pings are answered by the library
            }
        }
    }

    /// The next JSON frame; fails on a close or after `timeout`.
    async fn frame(&mut self, timeout: Duration) -> Value {
        match self.read(timeout).await {
            Got::Frame(value) => value,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads every frame from now on in a task of its own, so the client
    /// never stops reading whatever the test does meanwhile.
    pub(crate) fn drain(mut self) -> Drained {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let got = self.read(Duration::from_secs(120)).await;
                let last = !matches!(got, Got::Frame(_));
                if tx.send(got).is_err() || last {
                    return;
                }
            }
        });
        Drained(rx)
    }

    /// [`Self::drain`] at most `per_tick` frames every `tick`: a client
    /// that reads all the time, but slower than a burst comes. (The pace is
    /// what is simulated here, not a wait for a condition.)
    pub(crate) fn drain_paced(mut self, per_tick: usize, tick: Duration) -> Drained {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(tick);
            loop {
                pace.tick().await;
                for _ in 0..per_tick {
                    let got = self.read(Duration::from_secs(120)).await;
                    let last = !matches!(got, Got::Frame(_));
                    if tx.send(got).is_err() || last {
                        return;
                    }
                }
            }
        });
        Drained(rx)
    }

    pub(crate) async fn subscribe(&mut self, channels: &[&str]) -> Vec<Value> {
        self.send(json!({"op": "subscribe", "channels": channels})).await;
        let mut answers = Vec::new();
        for _ in channels {
            let frame = self.frame(Duration::from_secs(10)).await;
            assert_eq!(frame["type"], "subscribed", "{frame}");
            assert_eq!(frame["seq"], 0, "{frame}");
            answers.push(frame);
        }
        answers
    }
}

/// What a draining client read, in order.
pub(crate) struct Drained(tokio::sync::mpsc::UnboundedReceiver<Got>);

impl Drained {
    pub(crate) async fn frame(&mut self) -> Value {
        match self.0.recv().await {
            Some(Got::Frame(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The close code, skipping frames before it.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.0.recv().await {
                Some(Got::Frame(_)) => {}
                Some(Got::Closed(code)) => return code,
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }
}

/// The swap states the consumer must publish for `token`: per partition in
/// offset order, a swap's first pending (unless a terminal status came
/// first) and its first terminal status when that is `confirmed`.
pub(crate) fn expected_states(truth: &GroundTruthFile, token: &str) -> BTreeSet<(String, u64, String)> {
    let mut states = BTreeSet::new();
    for entries in truth.delivered().values() {
        let mut last: HashMap<(String, u64), String> = HashMap::new();
        for entry in entries {
            let e = &entry.event;
            let id = (e["tx_hash"].as_str().unwrap().to_owned(), e["log_index"].as_u64().unwrap_or(0));
            let status = e["status"].as_str().unwrap().to_owned();
            let publish = matches!(
                (last.get(&id).map(String::as_str), status.as_str()),
                (None, "pending") | (None | Some("pending"), "confirmed")
            );
            let becomes = match (last.get(&id).map(String::as_str), status.as_str()) {
                (None, _) | (Some("pending"), "confirmed" | "failed") => Some(status.clone()),
                _ => None,
            };
            if publish && (e["token_from"] == token || e["token_to"] == token) {
                states.insert((id.0.clone(), id.1, status.clone()));
            }
            if let Some(becomes) = becomes {
                last.insert(id, becomes);
            }
        }
    }
    states
}

/// What a client received on one channel, checked as it arrives: `seq`
/// goes up by exactly one (a `skipped` frame accounts for the numbers of
/// the frames it replaced), no swap state twice, every swap involves the
/// channel's token.
pub(crate) struct Received {
    next_seq: u64,
    pub(crate) states: BTreeSet<(String, u64, String)>,
    last_stats: Option<Value>,
    stats_frames: u32,
    since: Instant,
    /// Swap frames announced as skipped, and the `skipped` frames.
    pub(crate) skipped: u64,
    pub(crate) skipped_frames: u32,
}

impl Received {
    pub(crate) fn new() -> Received {
        Received {
            next_seq: 1,
            states: BTreeSet::new(),
            last_stats: None,
            stats_frames: 0,
            since: Instant::now(),
            skipped: 0,
            skipped_frames: 0,
        }
    }

    /// `stats` frames are coalesced: at most one per `interval` since this
    /// record began, and one more for a frame already under way.
    fn assert_stats_coalesced(&self, interval: Duration) {
        let allowed = (self.since.elapsed().as_secs_f64() / interval.as_secs_f64()).floor() as u32 + 1;
        assert!(
            (1..=allowed).contains(&self.stats_frames),
            "{} stats frames in {:?}; at most one per {interval:?} allowed ({allowed})",
            self.stats_frames,
            self.since.elapsed()
        );
    }

    pub(crate) fn take(&mut self, frame: &Value, channel: &str, token: &str) {
        assert_eq!(frame["channel"], channel, "{frame}");
        if frame["type"] == "skipped" {
            // The frames it replaced took from_seq..=to_seq; it takes the next.
            assert_eq!(frame["from_seq"], self.next_seq, "gap or repeat before a skipped range: {frame}");
            let (from, to) = (frame["from_seq"].as_u64().unwrap(), frame["to_seq"].as_u64().unwrap());
            assert!(to >= from, "{frame}");
            assert_eq!(frame["seq"], to + 1, "{frame}");
            let count = frame["count"].as_u64().expect("a count");
            assert!(count <= to - from + 1, "more swaps than seq numbers: {frame}");
            assert_eq!(frame["stats"]["token"], token, "the channel's stats object: {frame}");
            self.next_seq = to + 1;
            self.skipped += count;
            self.skipped_frames += 1;
            self.last_stats = Some(frame["stats"].clone());
        }
        assert_eq!(frame["seq"], self.next_seq, "gap or repeat in seq: {frame}");
        self.next_seq += 1;
        match frame["type"].as_str() {
            Some("swap") => {
                let swap = &frame["swap"];
                assert!(swap["token_from"] == token || swap["token_to"] == token, "not a {token} swap: {frame}");
                let status = swap["status"].as_str().unwrap().to_owned();
                assert!(status == "pending" || status == "confirmed", "{frame}");
                let state =
                    (swap["tx_hash"].as_str().unwrap().to_owned(), swap["log_index"].as_u64().unwrap_or(0), status);
                assert!(self.states.insert(state.clone()), "swap state received twice: {state:?}");
            }
            Some("stats") => {
                self.last_stats = Some(frame["stats"].clone());
                self.stats_frames += 1;
            }
            Some("skipped") => {}
            _ => panic!("unexpected frame on {channel}: {frame}"),
        }
    }

    /// Reads until a `stats` frame shows the ground truth's final totals of
    /// `token`, then until the channel is quiet: a stats frame reads Redis,
    /// which is written before the update is published, so the last swap
    /// frames may come just after it.
    async fn until_final(&mut self, client: &mut Client, truth: &GroundTruthFile, channel: &str, token: &str) {
        let totals = &truth.expected["tokens"][token]["totals"];
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.last_stats.as_ref().map(|s| &s["totals"]) != Some(totals) {
            assert!(Instant::now() < deadline, "no final stats frame for {channel}");
            let frame = client.frame(Duration::from_secs(60)).await;
            self.take(&frame, channel, token);
        }
        while let Got::Frame(frame) = client.read(QUIET).await {
            self.take(&frame, channel, token);
        }
    }
    /// [`Self::until_final`] from a [`Drained`] client.
    pub(crate) async fn until_final_drained(
        &mut self,
        client: &mut Drained,
        truth: &GroundTruthFile,
        channel: &str,
        token: &str,
    ) {
        let totals = &truth.expected["tokens"][token]["totals"];
        while self.last_stats.as_ref().map(|s| &s["totals"]) != Some(totals) {
            let frame = client.frame().await;
            self.take(&frame, channel, token);
        }
        while let Ok(frame) = tokio::time::timeout(QUIET, client.frame()).await {
            self.take(&frame, channel, token);
        }
    }
}

pub(crate) fn stream_vars(rate: &str) -> Vec<(&'static str, String)> {
    helpers::stream_vars(TOKENS, rate, 1000)
}

pub(crate) fn consumer_vars(names: &Names, brokers: &str, instance: &str) -> Vec<(&'static str, String)> {
    let mut vars = names.vars(brokers);
    vars.extend([
        ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".into()),
        ("SWAPSTREAM_BATCH_MAX_MS", "50".into()),
        ("SWAPSTREAM_INSTANCE_ID", format!("{}-{instance}", names.schema)),
        ("SWAPSTREAM_KAFKA_OPTIONS", "session.timeout.ms=6000".into()),
        ("SWAPSTREAM_WS_STATS_INTERVAL_MS", STATS_INTERVAL.as_millis().to_string()),
        ("SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", "1".into()),
        ("SWAPSTREAM_WS_PRESENCE_TTL_SECS", "3".into()),
    ]);
    vars
}

pub(crate) async fn start_consumer(names: &Names, vars: &[(&'static str, String)], name: &str) -> (Child, u16) {
    let child = Child::spawn(&format!("{}-{name}", names.schema), &["consumer"], vars);
    let port = helpers::logged_port(&child).await;
    (child, port)
}

async fn create_topics(names: &Names, brokers: &str) {
    let settings = names.settings(&[
        ("SWAPSTREAM_KAFKA_TOPIC_PREFIX", &names.topic_prefix),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "4"),
        ("SWAPSTREAM_KAFKA_DLQ_TOPIC", &names.dlq),
    ]);
    let topics: Vec<String> = TOKENS.split(',').map(|t| format!("{}{t}", names.topic_prefix)).collect();
    swapstream::kafka::create_topics(&settings.kafka, brokers, &topics, &swapstream::telemetry::discard())
        .await
        .expect("creating topics");
}

pub(crate) async fn metric(port: u16, line_start: &str) -> f64 {
    let (_, text) = helpers::http_get(port, "/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_channel_gets_exactly_its_swaps_in_order_and_unsubscribe_stops_them() {
    let brokers = require_broker();
    let names = Names::new("it-ws-truth");
    let (mut consumer, port) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;

    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["TOKEN:eth"]).await;
    assert_eq!(subscribed[0]["channel"], "token:ETH", "channel names are canonical");
    assert_eq!(subscribed[0]["snapshot"]["token"], "ETH");
    assert_eq!(subscribed[0]["snapshot"]["totals"]["swaps"], 0, "nothing produced yet");
    // Counts from here, so that frames waiting in the socket are inside its time.
    let mut received = Received::new();
    let mut pair_client = Client::connect(port).await;
    let subscribed = pair_client.subscribe(&["pair:usdc-eth"]).await;
    assert_eq!(subscribed[0]["channel"], "pair:ETH-USDC");
    let mut leaver = Client::connect(port).await;
    leaver.subscribe(&["token:ETH"]).await;

    eventually("/v1/ws/stats counts the clients", Duration::from_secs(10), || async move {
        let (status, body) = helpers::http_get(port, "/v1/ws/stats").await;
        let stats: Value = serde_json::from_str(&body).unwrap_or_default();
        status == 200 && stats["sessions"] == 3 && stats["channels"]["token:ETH"] == 2
    })
    .await;

    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 300, &stream_vars("6000")).await }
    });

    // The leaver takes a few swaps, unsubscribes, and must get none after.
    let mut left = Received::new();
    while left.states.len() < 3 {
        let frame = leaver.frame(Duration::from_secs(60)).await;
        left.take(&frame, "token:ETH", "ETH");
    }
    leaver.send(json!({"op": "unsubscribe", "channels": ["token:eth"]})).await;
    loop {
        let frame = leaver.frame(Duration::from_secs(10)).await;
        if frame["type"] == "unsubscribed" {
            assert_eq!(frame["channel"], "token:ETH");
            break;
        }
        left.take(&frame, "token:ETH", "ETH");
    }

    let truth = producing.await.unwrap();
    received.until_final(&mut client, &truth, "token:ETH", "ETH").await;
    let expected = expected_states(&truth, "ETH");
    assert!(expected.iter().any(|s| s.2 == "pending") && expected.iter().any(|s| s.2 == "confirmed"));
    assert_eq!(received.states, expected, "the ETH swap states differ from the ground truth");
    // Hundreds of updates changed the channel, a few frames per second told it.
    assert!(expected.len() > 100);
    received.assert_stats_coalesced(STATS_INTERVAL);

    let mut pair = Received::new();
    let pair_totals = &truth.expected["pairs"]["ETH-USDC"]["totals"];
    while pair.last_stats.as_ref().map(|s| &s["totals"]) != Some(pair_totals) {
        let frame = pair_client.frame(Duration::from_secs(60)).await;
        assert_eq!(frame["channel"], "pair:ETH-USDC");
        assert_eq!(frame["seq"], pair.next_seq);
        pair.next_seq += 1;
        if frame["type"] == "stats" {
            pair.last_stats = Some(frame["stats"].clone());
        } else {
            let swap = &frame["swap"];
            let tokens = BTreeSet::from([swap["token_from"].as_str().unwrap(), swap["token_to"].as_str().unwrap()]);
            assert_eq!(tokens, BTreeSet::from(["ETH", "USDC"]), "{frame}");
        }
    }

    // Nothing reached the leaver after its `unsubscribed`: the next frame
    // it gets is the answer to a ping.
    leaver.send(json!({"op": "ping"})).await;
    assert_eq!(leaver.frame(Duration::from_secs(10)).await, json!({"type": "pong"}));
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(60)).await;
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_two_instances_each_get_every_swap_of_their_channel() {
    let brokers = require_broker();
    let names = Names::new("it-ws-two");
    create_topics(&names, &brokers).await;
    let (mut a, port_a) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let (mut b, port_b) = start_consumer(&names, &consumer_vars(&names, &brokers, "b"), "b").await;
    let client = helpers::pg().await;
    let owners = format!("SELECT count(DISTINCT owner)::bigint FROM {}.offsets", names.schema);
    eventually("both instances own partitions", Duration::from_secs(60), || {
        let (client, owners) = (&client, &owners);
        async move { client.query_one(owners.as_str(), &[]).await.map(|r| r.get::<_, i64>(0) == 2).unwrap_or(false) }
    })
    .await;

    let mut on_a = Client::connect(port_a).await;
    on_a.subscribe(&["token:ETH"]).await;
    let mut on_b = Client::connect(port_b).await;
    on_b.subscribe(&["token:ETH"]).await;
    eventually("/v1/ws/stats sums both instances", Duration::from_secs(10), || async move {
        let (_, body) = helpers::http_get(port_a, "/v1/ws/stats").await;
        let stats: Value = serde_json::from_str(&body).unwrap_or_default();
        stats["sessions"] == 2 && stats["instances"].as_array().map(Vec::len) == Some(2)
    })
    .await;

    let truth = helpers::produce(&brokers, &names, 300, &stream_vars("max")).await;
    let expected = expected_states(&truth, "ETH");
    let mut got_a = Received::new();
    let mut got_b = Received::new();
    tokio::join!(
        got_a.until_final(&mut on_a, &truth, "token:ETH", "ETH"),
        got_b.until_final(&mut on_b, &truth, "token:ETH", "ETH"),
    );
    assert_eq!(got_a.states, expected, "client on instance a");
    assert_eq!(got_b.states, expected, "client on instance b");
    a.kill9().await;
    b.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gets_every_swap_of_its_channel_over_redis_cluster() {
    let nodes = helpers::require_redis_cluster();
    let brokers = require_broker();
    let names = Names::new("it-ws-cluster");
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.push(("SWAPSTREAM_REDIS_MODE", "cluster".into()));
    vars.push(("SWAPSTREAM_REDIS_URL", nodes.into()));
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut client = Client::connect(port).await;
    client.subscribe(&["token:SOL"]).await;

    let truth = helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    let mut received = Received::new();
    received.until_final(&mut client, &truth, "token:SOL", "SOL").await;
    assert_eq!(received.states, expected_states(&truth, "SOL"), "SOL swap states over Redis Cluster");
    consumer.kill9().await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A client that completes the handshake, subscribes, and never reads
/// again; its receive buffer is small, so the server's side fills quickly.
pub(crate) fn stalled_client(port: u16, channel: &str) -> std::net::TcpStream {
    let mut stream = small_window_socket(port);
    upgrade_and_subscribe(&mut stream, port, channel);
    stream
}

/// A TCP connection whose receive window is small, so a client that stops
/// reading stalls the server's writes after a few kilobytes.
pub(crate) fn small_window_socket(port: u16) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// The WebSocket handshake and one subscribe request, by hand.
fn upgrade_and_subscribe(stream: &mut (impl Read + Write), port: u16, channel: &str) {
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(&masked_text(&json!({"op": "subscribe", "channels": [channel]}).to_string())).unwrap();
    stream.flush().unwrap();
}

/// Reads an evicted client's connection: what was buffered, then its end
/// (EOF or an error). False if it is still open: reads time out, or more
/// keeps coming than any buffer could hold.
pub(crate) async fn reads_to_its_end(mut stream: impl Read + Send + 'static) -> (bool, usize) {
    let reading = tokio::task::spawn_blocking(move || {
        let mut buffered = 0usize;
        let mut chunk = [0u8; 65536];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return (true, buffered),
                Ok(n) => buffered += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    return (false, buffered)
                }
                Err(_) => return (true, buffered),
            }
            if buffered > 4 << 20 {
                return (false, buffered);
            }
        }
    });
    reading.await.unwrap()
}

/// A client-to-server text frame (masked, as the protocol requires).
fn masked_text(text: &str) -> Vec<u8> {
    masked_frame(0x1, text.as_bytes())
}

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

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
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 3000, &stream_vars("120000")).await }
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
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let plain = helpers::logged_number(&consumer, "health_port").await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(tls.client.clone(), name).unwrap();
    let mut stalled = rustls::StreamOwned::new(connection, small_window_socket(port));
    upgrade_and_subscribe(&mut stalled, port, "token:ETH");
    assert_eq!(metric(plain, "swapstream_ws_sessions").await, 1.0);

    // Act: the channel gets busy; the client never reads.
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 3000, &stream_vars("120000")).await }
    });

    // Assert: evicted, and the TLS connection really closed under it.
    eventually("the stalled TLS client is evicted", Duration::from_secs(60), || async move {
        metric(plain, "swapstream_ws_evictions_total{reason=\"write_deadline\"}").await >= 1.0
    })
    .await;
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
async fn hostile_input_is_answered_with_errors_and_the_process_carries_on() {
    let brokers = require_broker();
    let names = Names::new("it-ws-hostile");
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.extend([
        ("SWAPSTREAM_WS_MAX_BAD_FRAMES", "6".into()),
        ("SWAPSTREAM_WS_MAX_FRAME_BYTES", "1024".into()),
        ("SWAPSTREAM_WS_MAX_CHANNELS", "3".into()),
        ("SWAPSTREAM_WS_MAX_CONNS_PER_IP", "20".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;

    // Each kind of bad frame gets its error; the connection stays usable.
    let mut client = Client::connect(port).await;
    let expect_error = |frame: Value, code: &str| {
        assert_eq!((frame["type"].as_str(), frame["code"].as_str()), (Some("error"), Some(code)), "{frame}");
    };
    client.socket.send(Message::text("{not json")).await.unwrap();
    expect_error(client.frame(Duration::from_secs(5)).await, "bad_json");
    client.socket.send(Message::binary(vec![0xff, 0x00, 0x13, 0x37])).await.unwrap();
    expect_error(client.frame(Duration::from_secs(5)).await, "bad_frame");
    client.send(json!({"op": "explode"})).await;
    expect_error(client.frame(Duration::from_secs(5)).await, "unknown_op");
    client.send(json!({"op": "subscribe", "channels": ["token:not a token", "candle:ETH"]})).await;
    expect_error(client.frame(Duration::from_secs(5)).await, "bad_channel");
    expect_error(client.frame(Duration::from_secs(5)).await, "bad_channel");
    client.socket.send(Message::text(format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(2000)))).await.unwrap();
    expect_error(client.frame(Duration::from_secs(5)).await, "frame_too_large");
    client.send(json!({"op": "ping"})).await;
    assert_eq!(client.frame(Duration::from_secs(5)).await, json!({"type": "pong"}));
    // The sixth bad frame closes the connection with 1008.
    client.send(json!({"op": "subscribe", "channels": ["token:A", "token:B", "token:C", "token:D"]})).await;
    expect_error(client.frame(Duration::from_secs(5)).await, "too_many_channels");
    assert!(matches!(client.read(Duration::from_secs(5)).await, Got::Closed(Some(1008))));

    // 10k subscribe requests: the same channel again and again is one
    // subscription; more channels than allowed are refused.
    let mut client = Client::connect(port).await;
    for _ in 0..10_000 {
        client.socket.feed(Message::text(r#"{"op":"subscribe","channels":["token:ETH"]}"#)).await.unwrap();
    }
    client.socket.flush().await.unwrap();
    let first = client.frame(Duration::from_secs(10)).await;
    assert_eq!((&first["type"], &first["channel"]), (&json!("subscribed"), &json!("token:ETH")));
    client
        .send(json!({"op": "subscribe", "channels": (0..10_000).map(|i| format!("token:T{i}")).collect::<Vec<_>>()}))
        .await;
    match client.read(Duration::from_secs(5)).await {
        Got::Frame(frame) => expect_error(frame, "frame_too_large"),
        Got::Closed(code) => assert_eq!(code, Some(1009), "a frame over 4x the limit ends the connection"),
        Got::Timeout => panic!("no answer to a huge subscribe request"),
    }

    // A frame far over the limit closes with 1009 without being buffered.
    let mut client = Client::connect(port).await;
    client.socket.send(Message::text("x".repeat(1 << 20))).await.unwrap();
    assert!(matches!(client.read(Duration::from_secs(5)).await, Got::Closed(Some(1009))));

    // Too many connections from one address: the one over the limit is refused.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(Client::connect(port).await);
    }
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("the 21st connection was not refused: {:?}", other.map(|_| ())),
    }
    drop(held);
    assert!(metric(port, "swapstream_ws_connections_refused_total{reason=\"per_ip_limit\"}").await >= 1.0);

    // Garbage that is not WebSocket at all, on a raw connection.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage").unwrap();

    // Still serving: health, and a new client subscribes.
    assert_eq!(consumer.child.try_wait().unwrap(), None, "the consumer died");
    eventually("a new connection is accepted once the held ones closed", Duration::from_secs(10), || async move {
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await.is_ok()
    })
    .await;
    let mut client = Client::connect(port).await;
    client.subscribe(&["pair:ETH-USDC"]).await;
    assert_eq!(helpers::http_get(port, "/healthz").await.0, 200);
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_excludes_only_its_holder_expires_and_guards_the_presence_clean_up() {
    let names = Names::new("it-ws-lock");
    let settings = names.settings(&[]);
    let a = Presence::new(&RedisStore::connect(&settings.redis, 100).await.unwrap());
    let b = Presence::new(&RedisStore::connect(&settings.redis, 100).await.unwrap());
    let ttl = Duration::from_millis(800);

    // Two instances racing for the lock: exactly one holds it each round.
    for _ in 0..20 {
        let (got_a, got_b) = tokio::join!(a.acquire("job", ttl), b.acquire("job", ttl));
        let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
        assert!(got_a.is_some() != got_b.is_some(), "both or neither took the lock");
        let (holder, lock) = match (got_a, got_b) {
            (Some(lock), None) => (&a, lock),
            (None, Some(lock)) => (&b, lock),
            _ => unreachable!(),
        };
        assert!(holder.release(&lock).await.unwrap());
    }

    // A non-holder cannot release it.
    let lock = a.acquire("job", ttl).await.unwrap().expect("free");
    assert!(!b.release(&Lock::forged(&b, "job", ttl)).await.unwrap());
    assert!(b.acquire("job", ttl).await.unwrap().is_none(), "still held by a");

    // Renewed, it outlives its TTL; released by its holder, it is free.
    let started = Instant::now();
    while started.elapsed() < ttl * 2 {
        assert!(a.renew(&lock).await.unwrap());
        assert!(b.acquire("job", ttl).await.unwrap().is_none());
        tokio::time::sleep(ttl / 4).await;
    }
    // Not renewed, it expires and the other instance takes over; the old
    // holder can then neither renew nor release the new one's lock.
    let expired_at = Instant::now();
    let taken = loop {
        if let Some(lock) = b.acquire("job", ttl).await.unwrap() {
            break lock;
        }
        assert!(expired_at.elapsed() < ttl * 4, "the lock never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(expired_at.elapsed() >= ttl / 2, "taken over before the TTL");
    assert!(!a.renew(&lock).await.unwrap());
    assert!(!a.release(&lock).await.unwrap());
    assert!(b.release(&taken).await.unwrap());

    // with_lock: the job runs for longer than the TTL, renewed meanwhile,
    // and a second instance's job does not run at the same time.
    let long_job = a.with_lock("job", ttl, async {
        tokio::time::sleep(ttl * 2).await;
        Ok(1)
    });
    let contender = async {
        tokio::time::sleep(ttl + ttl / 2).await;
        b.with_lock("job", ttl, async { Ok(2) }).await.unwrap()
    };
    let (first, second) = tokio::join!(long_job, contender);
    assert_eq!((first.unwrap(), second), (Some(1), None));

    // The clean-up removes a dead instance's leftovers, not live ones.
    let ghost = InstanceCounts { instance: "ghost".into(), sessions: 7, ..Default::default() };
    let alive = InstanceCounts { instance: "alive".into(), sessions: 2, ..Default::default() };
    a.heartbeat(&ghost, Duration::from_millis(500)).await.unwrap();
    a.heartbeat(&alive, Duration::from_secs(30)).await.unwrap();
    assert_eq!(a.counts().await.unwrap().sessions, 9);
    eventually("the dead instance's counts expire", Duration::from_secs(5), || {
        let a = &a;
        async move { a.counts().await.unwrap().sessions == 2 }
    })
    .await;
    let cleaning = Instant::now();
    let removed = loop {
        match b.clean_dead(Duration::from_millis(500)).await.unwrap() {
            Some(removed) if !removed.is_empty() => break removed,
            _ => assert!(cleaning.elapsed() < Duration::from_secs(5), "the dead instance was not cleaned up"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(removed, ["ghost"]);
    let counts = b.counts().await.unwrap();
    assert_eq!(counts.instances.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(), ["alive"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_closes_clients_with_1001_and_loses_nothing() {
    let brokers = require_broker();
    let names = Names::new("it-ws-sigterm");
    let vars = consumer_vars(&names, &brokers, "a");
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut clients = Vec::new();
    for channel in ["token:ETH", "token:BTC", "pair:ETH-USDC"] {
        let mut client = Client::connect(port).await;
        client.subscribe(&[channel]).await;
        clients.push(client.drain());
    }
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 2000, &stream_vars("60000")).await }
    });
    let pg = helpers::pg().await;
    eventually("the consumer makes progress", Duration::from_secs(60), || {
        let (pg, names) = (&pg, &names);
        async move { helpers::checkpointed(pg, names).await > 200 }
    })
    .await;

    let started = Instant::now();
    let status = consumer.terminate(Duration::from_secs(25)).await;
    assert!(status.success(), "SIGTERM must end in exit 0, got {status}; log: {}", consumer.log_text());
    println!("consumer exited {:?} after SIGTERM", started.elapsed());
    for client in &mut clients {
        assert_eq!(client.close_code().await, Some(1001), "clients get 1001 going away");
    }
    let log = consumer.log_text();
    let closing = log.find("closing WebSocket sessions").expect("sessions closed");
    assert!(log.find("leaving the consumer group").is_some_and(|at| at < closing), "checkpoint and leave first");

    // Restarted, it finishes the stream: nothing lost, nothing twice.
    let truth = producing.await.unwrap();
    let (mut consumer, _) = start_consumer(&names, &vars, "b").await;
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    let (stored, pending) = helpers::from_postgres(&names).await;
    assert_eq!(stored, truth.expected, "PostgreSQL differs from the ground truth");
    assert_eq!(pending, 0);
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_updates_show_a_seq_gap_on_the_channels_they_hit() {
    let names = Names::new("it-ws-gap");
    let redis = helpers::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let vars = vec![
        ("SWAPSTREAM_POSTGRES_SCHEMA", names.schema.clone()),
        ("SWAPSTREAM_REDIS_KEY_PREFIX", names.redis_prefix.clone()),
        ("SWAPSTREAM_REDIS_URL", url.clone()),
        ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("SWAPSTREAM_LOG_FORMAT", "json".to_owned()),
    ];
    let mut api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = helpers::logged_port(&api).await;
    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["token:ETH", "token:SOL"]).await;
    assert_eq!((&subscribed[0]["channel"], &subscribed[1]["channel"]), (&json!("token:ETH"), &json!("token:SOL")));

    let channel = format!("{}:updates:{{token:ETH}}", names.redis_prefix);
    let swap = |status: &str, n: u8| {
        json!({"tx_hash": format!("0x{}", format!("{n:02x}").repeat(32)), "log_index": 0, "status": status,
            "timestamp": "2026-11-25T08:00:00Z", "token_from": "ETH", "token_to": "USDC",
            "amount_from": "1", "amount_to": "4000", "usd_value": "4000"})
    };
    let publisher = redis::Client::open(url.as_str()).unwrap();
    let mut conn = publisher.get_multiplexed_async_connection().await.unwrap();
    // The registry subscribes in the background: publish until it hears.
    let first = json!({"key": "token:ETH", "swaps": [swap("pending", 1)]}).to_string();
    let got = loop {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&first).query_async(&mut conn).await.unwrap();
        if let Got::Frame(frame) = client.read(Duration::from_millis(500)).await {
            break frame;
        }
    };
    assert_eq!((&got["type"], &got["seq"]), (&json!("swap"), &json!(1)));

    // Every pub/sub connection of this Redis is cut; the registry reconnects.
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    eventually("the pub/sub connection is back", Duration::from_secs(15), || async move {
        let (_, metrics) = helpers::http_get(port, "/metrics").await;
        metrics.lines().any(|l| l.starts_with("swapstream_ws_pubsub_resumed_total ") && !l.ends_with(" 0"))
    })
    .await;
    let second = json!({"key": "token:ETH", "swaps": [swap("confirmed", 1)]}).to_string();
    let got = loop {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&second).query_async(&mut conn).await.unwrap();
        if let Got::Frame(frame) = client.read(Duration::from_millis(500)).await {
            break frame;
        }
    };
    assert_eq!((&got["type"], &got["seq"]), (&json!("swap"), &json!(3)), "seq 2 is skipped: a visible gap");
    assert_eq!(got["swap"]["status"], "confirmed");

    // The swap feed lost states of token:ETH: its next update says so, and
    // only that channel skips a seq.
    let lost = json!({"key": "token:ETH", "gap": true, "swaps": [swap("pending", 2)]}).to_string();
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&lost).query_async(&mut conn).await.unwrap();
    let got = client.frame(Duration::from_secs(10)).await;
    assert_eq!((&got["channel"], &got["seq"]), (&json!("token:ETH"), &json!(5)), "seq 4 is skipped: {got}");
    let sol = json!({"key": "token:SOL", "swaps": [swap("pending", 3)]}).to_string();
    let sol_channel = format!("{}:updates:{{token:SOL}}", names.redis_prefix);
    let _: i64 = redis::cmd("PUBLISH").arg(&sol_channel).arg(&sol).query_async(&mut conn).await.unwrap();
    let got = client.frame(Duration::from_secs(10)).await;
    // token:SOL had one frame number skipped by the lost connection only.
    assert_eq!((&got["channel"], &got["seq"]), (&json!("token:SOL"), &json!(2)), "{got}");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
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

#[tokio::test(flavor = "multi_thread")]
async fn swap_frames_do_not_wait_for_postgres_and_stats_follow_the_commit() {
    let brokers = require_broker();
    let names = Names::new("it-ws-early");
    let (mut consumer, port) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let first = helpers::produce(&brokers, &names, 30, &stream_vars("max")).await;
    wait_checkpointed(&names, delivered(&first), Duration::from_secs(90)).await;
    let mut client = Client::connect(port).await;
    let snapshot = client.subscribe(&["token:ETH"]).await.remove(0);
    let before = json!(first.expected["tokens"]["ETH"]["totals"]["swaps"].as_u64().unwrap());
    // Redis is written just after the commit: the stats may still follow.
    let mut received = Received::new();
    let mut shown = snapshot["snapshot"]["totals"]["swaps"].clone();
    while shown != before {
        let frame = client.frame(Duration::from_secs(30)).await;
        received.take(&frame, "token:ETH", "ETH");
        shown = received.last_stats.as_ref().map_or(json!(null), |s| s["totals"]["swaps"].clone());
    }
    assert!(received.states.is_empty(), "the first swaps' frames went out before their commit");

    // Another session holds the offsets table: no checkpoint can commit.
    let mut holder = helpers::pg().await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE {}.offsets IN EXCLUSIVE MODE", names.schema)).await.unwrap();
    let second = helpers::produce(&brokers, &names, 100, &stream_vars("max")).await;

    // Act: every new ETH swap state arrives meanwhile; the stats do not move.
    let expected = expected_states(&second, "ETH");
    while received.states.len() < expected.len() {
        let frame = client.frame(Duration::from_secs(30)).await;
        received.take(&frame, "token:ETH", "ETH");
        if let Some(stats) = &received.last_stats {
            assert_eq!(stats["totals"]["swaps"], before, "stats before the commit: {stats}");
        }
    }
    assert_eq!(received.states, expected);
    let watcher = helpers::pg().await;
    let waiting =
        "SELECT count(*)::bigint FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%offsets%'";
    let blocked: i64 = watcher.query_one(waiting, &[]).await.unwrap().get(0);
    assert!(blocked > 0, "the frames came while a checkpoint waited for the lock");
    assert!(helpers::checkpointed(&watcher, &names).await < delivered(&first) + delivered(&second));

    // Assert: once PostgreSQL lets go, the stats show every swap, once.
    lock.rollback().await.unwrap();
    let after = before.as_u64().unwrap() + second.expected["tokens"]["ETH"]["totals"]["swaps"].as_u64().unwrap();
    while received.last_stats.as_ref().map(|s| &s["totals"]["swaps"]) != Some(&json!(after)) {
        let frame = client.frame(Duration::from_secs(30)).await;
        received.take(&frame, "token:ETH", "ETH");
    }
    wait_checkpointed(&names, delivered(&first) + delivered(&second), Duration::from_secs(30)).await;
    while let Got::Frame(frame) = client.read(QUIET).await {
        received.take(&frame, "token:ETH", "ETH");
    }
    assert_eq!(received.states, expected, "no swap state twice, none after the commit");
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_many_subscriptions_frames_gather_into_fewer_handoffs_and_none_is_lost() {
    let brokers = require_broker();
    let names = Names::new("it-ws-coalesce");
    // Ten subscriptions at 10 handoffs/s: frames gather for a second.
    // Stats frames, handed on apart from swaps, come every 5 s at most.
    let mut vars: Vec<_> = consumer_vars(&names, &brokers, "a")
        .into_iter()
        .filter(|(name, _)| *name != "SWAPSTREAM_WS_STATS_INTERVAL_MS")
        .collect();
    vars.extend([
        ("SWAPSTREAM_WS_HANDOFFS_PER_SEC", "10".into()),
        ("SWAPSTREAM_WS_COALESCE_MAX_MS", "1000".into()),
        ("SWAPSTREAM_WS_STATS_INTERVAL_MS", "5000".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = Client::connect(port).await;
        client.subscribe(&["token:ETH"]).await;
        clients.push(client.drain());
    }
    let started = Instant::now();

    // Act
    let truth = helpers::produce(&brokers, &names, 300, &stream_vars("3000")).await;
    // The last frames are under way for at most a handoff and a checkpoint.
    let elapsed = started.elapsed() + Duration::from_secs(1);
    let totals = &truth.expected["tokens"]["ETH"]["totals"];
    let mut received = Vec::new();
    for client in &mut clients {
        let mut got = Received::new();
        while got.last_stats.as_ref().map(|s| &s["totals"]) != Some(totals) {
            let frame = tokio::time::timeout(Duration::from_secs(30), client.frame()).await.expect("final stats");
            got.take(&frame, "token:ETH", "ETH");
        }
        while let Ok(Some(Got::Frame(frame))) = tokio::time::timeout(QUIET, client.0.recv()).await {
            got.take(&frame, "token:ETH", "ETH");
        }
        received.push(got);
    }

    // Assert: every client got every state, in far fewer handoffs than frames.
    let expected = expected_states(&truth, "ETH");
    for got in &received {
        assert_eq!(got.states, expected);
    }
    let handoffs = metric(port, "swapstream_ws_handoffs_total ").await;
    let frames: f64 = received.iter().map(|r| (r.next_seq - 1) as f64).sum();
    let gathered = elapsed.as_secs_f64().ceil() + 1.0;
    // Stats frames go out on their own, and the final ones after production.
    let stats = (elapsed.as_secs_f64() / 5.0).ceil() + 3.0;
    assert!(
        handoffs <= 10.0 * (gathered + stats),
        "{handoffs} handoffs in {elapsed:?} for 10 clients: at most one a second and one per stats frame"
    );
    assert!(frames > 2.0 * handoffs, "{frames} frames in {handoffs} handoffs");
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_descriptor_capacity_an_instance_refuses_upgrades_and_stays_healthy() {
    let names = Names::new("it-ws-capacity");
    let vars = helpers::api_vars(&names, &[]);
    // 1064 descriptors: 1024 kept in reserve, one per session: 40 sessions.
    let mut api = Child::spawn_with_file_limit(&format!("{}api", names.topic_prefix), &["api"], &vars, 1064);
    let port = helpers::logged_port(&api).await;
    assert!(api.log_text().contains("\"sessions\":40"), "{}", api.log_text());
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(Client::connect(port).await);
    }

    // Act
    let refused = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await;

    // Assert: a clear refusal, and the instance still answers.
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("\"at_capacity\""), "{body}");
        }
        other => panic!("expected a 503 refusal, got {:?}", other.map(|_| "a session")),
    }
    let (status, _) = helpers::http_get(port, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(metric(port, "swapstream_ws_connections_refused_total{reason=\"at_capacity\"} ").await, 1.0);
    // A session that ends makes room for the next.
    drop(clients.pop());
    eventually("a freed slot takes a new client", Duration::from_secs(10), || async move {
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await.is_ok()
    })
    .await;
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
