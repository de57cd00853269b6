//! Hostile input and exhausted descriptors: clear errors, and the process
//! carries on serving.

use std::io::Write;
use std::time::Duration;

use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::client::{Client, Got};
use super::{consumer_vars, metric, start_consumer};
use crate::helpers::{self, eventually, require_broker, Child, Names};
use crate::support::http;

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
    // subscription, each request answered under its id; more channels than
    // allowed are refused.
    let mut client = Client::connect(port).await;
    for id in 0..10_000 {
        let request = json!({"op": "subscribe", "id": id, "channels": ["token:ETH"]});
        client.socket.feed(Message::text(request.to_string())).await.unwrap();
    }
    client.socket.flush().await.unwrap();
    let (mut snapshots, mut ids) = (Vec::new(), Vec::new());
    while ids.len() < 10_000 {
        let frame = client.frame(Duration::from_secs(10)).await;
        assert_eq!((&frame["type"], &frame["channel"]), (&json!("subscribed"), &json!("token:ETH")), "{frame}");
        if frame["already"] != true {
            snapshots.push(frame["id"].clone());
        }
        ids.push(frame["id"].as_u64().expect("an id"));
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..10_000).collect::<Vec<u64>>(), "every request answered once");
    assert_eq!(snapshots, [json!(0)], "one subscription, with its snapshot answering the first request");
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
    assert_eq!(http::get(port, "/healthz").await.0, 200);
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
    let (status, _) = http::get(port, "/healthz").await;
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
