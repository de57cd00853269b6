//! The WebSocket contract: a real consumer is driven to send every frame
//! type the AsyncAPI document it serves at `/v1/asyncapi.json` names, and
//! every frame it sends must match its message's payload schema (closed:
//! a stray field fails, as does a missing required one). Requests are
//! checked against the document too, a malformed one must fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::client::{Client, Got};
use super::{consumer_vars, start_consumer, stream_vars, QUIET};
use crate::helpers::{self, delivered, require_broker, wait_checkpointed, Names};
use crate::support::http;

/// The messages of the document's operations, by `op` (requests) or
/// `type` (frames): the payload schemas, `components` beside them so that
/// their references resolve.
struct Contract {
    document: Value,
    requests: BTreeMap<String, Value>,
    frames: BTreeMap<String, Value>,
}

impl Contract {
    fn new(document: Value) -> Contract {
        assert_eq!(document["asyncapi"], "3.0.0", "an AsyncAPI 3.0 document");
        let (mut requests, mut frames) = (BTreeMap::new(), BTreeMap::new());
        for (name, operation) in document["operations"].as_object().expect("operations") {
            let (by, into) = match operation["action"].as_str() {
                Some("receive") => ("op", &mut requests),
                Some("send") => ("type", &mut frames),
                other => panic!("{name}: action {other:?}"),
            };
            for message in operation["messages"].as_array().expect("messages") {
                let payload = Self::payload(&document, message);
                // A payload of several forms names its kind in each.
                let form = payload["oneOf"].get(0).unwrap_or(&payload);
                let kind = form["properties"][by]["const"].as_str().unwrap_or_else(|| panic!("{name}: no {by}"));
                into.insert(kind.to_owned(), payload.clone());
            }
        }
        Contract { document, requests, frames }
    }

    /// The payload of a message referenced from an operation (through the
    /// channel's messages to the components').
    fn payload<'a>(document: &'a Value, mut message: &'a Value) -> Value {
        while let Some(reference) = message["$ref"].as_str() {
            message = document.pointer(reference.trim_start_matches('#')).unwrap_or_else(|| panic!("{reference}"));
        }
        message["payload"].clone()
    }

    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut schema = schema.clone();
        schema["components"] = self.document["components"].clone();
        jsonschema::validator_for(&schema).expect("a valid JSON Schema")
    }

    /// What is wrong with `instance` against `schema`.
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        self.validator(schema).iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect()
    }
}

/// A client's requests and every frame it read.
struct Conversation {
    client: Client,
    sent: Vec<Value>,
    frames: Vec<Value>,
}

impl Conversation {
    /// Reads until a frame that answers a request (not a channel frame).
    async fn answer(&mut self) -> Value {
        loop {
            let frame = self.client.frame(Duration::from_secs(10)).await;
            self.frames.push(frame.clone());
            if !matches!(frame["type"].as_str(), Some("swap" | "stats" | "candle" | "skipped")) {
                return frame;
            }
        }
    }

    async fn ask(&mut self, request: Value) -> Value {
        self.client.send(request.clone()).await;
        self.sent.push(request);
        self.answer().await
    }

    /// Sends `message` (not a request) and returns the error code it gets.
    async fn refused(&mut self, message: Message) -> String {
        self.client.socket.send(message).await.expect("sending");
        let error = self.answer().await;
        assert_eq!(error["type"], "error", "{error}");
        error["code"].as_str().unwrap_or_default().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_frame_type_the_asyncapi_document_names_is_sent_as_it_describes() {
    let brokers = require_broker();
    let names = Names::new("it-ws-contract");
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.extend([
        ("SWAPSTREAM_WS_MAX_BAD_FRAMES", "100".into()),
        ("SWAPSTREAM_WS_MAX_FRAME_BYTES", "1024".into()),
        ("SWAPSTREAM_WS_MAX_CHANNELS", "6".into()),
        ("SWAPSTREAM_WS_MAX_CONNS_PER_IP", "3".into()),
        // A client that does not read is conflated soon, and not evicted
        // while the test keeps it waiting.
        ("SWAPSTREAM_WS_QUEUE_BYTES", "4096".into()),
        ("SWAPSTREAM_WS_SEND_BUFFER_BYTES", "4096".into()),
        ("SWAPSTREAM_WS_WRITE_DEADLINE_MS", "60000".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let (status, body) = http::get(port, "/v1/asyncapi.json").await;
    assert_eq!(status, 200, "{body}");
    let contract = Contract::new(serde_json::from_str(&body).expect("the document is JSON"));
    let truth = helpers::produce(&brokers, &names, 40, &stream_vars("max")).await;
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(60)).await;

    // Arrange: every answer and every error a request can get.
    let mut talk = Conversation { client: Client::connect(port).await, sent: Vec::new(), frames: Vec::new() };
    let refused = talk.ask(json!({"op": "subscribe", "id": "a", "channels": ["token:ETHH"], "known_only": true})).await;
    assert_eq!(refused["code"], "unknown_channel", "{refused}");
    let refused = talk.ask(json!({"op": "subscribe", "channels": ["candles:ETHH:1m"], "known_only": true})).await;
    assert_eq!((&refused["code"], &refused["channel"]), (&json!("unknown_channel"), &json!("candles:ETHH:1m")));
    let subscribed = talk.ask(json!({"op": "subscribe", "id": 1, "channels": ["token:eth"], "known_only": true})).await;
    assert_eq!((&subscribed["type"], &subscribed["seq"]), (&json!("subscribed"), &json!(0)), "{subscribed}");
    let pair = talk.ask(json!({"op": "subscribe", "channels": ["pair:usdc-eth"]})).await;
    assert_eq!(pair["channel"], "pair:ETH-USDC", "{pair}");
    let candles = talk.ask(json!({"op": "subscribe", "id": "c", "channels": ["candles:usdc-eth:1m"]})).await;
    assert_eq!((&candles["channel"], &candles["seq"]), (&json!("candles:ETH-USDC:1m"), &json!(0)), "{candles}");
    let already = talk.ask(json!({"op": "subscribe", "id": 2, "channels": ["TOKEN:ETH"]})).await;
    assert_eq!(already["already"], true, "{already}");
    let unseen = talk.ask(json!({"op": "subscribe", "id": "n", "channels": ["token:NEWT"]})).await;
    assert_eq!(unseen["seen"], false, "{unseen}");
    let listed = talk.ask(json!({"op": "list_subscriptions", "id": 3})).await;
    assert_eq!(listed["channels"], json!(["candles:ETH-USDC:1m", "pair:ETH-USDC", "token:ETH", "token:NEWT"]));
    let unsubscribed = talk.ask(json!({"op": "unsubscribe", "id": 4, "channels": ["token:NEWT"]})).await;
    assert_eq!(unsubscribed["type"], "unsubscribed");
    assert_eq!(talk.ask(json!({"op": "ping", "id": "p"})).await, json!({"type": "pong", "id": "p"}));
    assert_eq!(talk.ask(json!({"op": "ping"})).await, json!({"type": "pong"}));
    let mut sent = std::mem::take(&mut talk.sent);
    let mut codes = BTreeSet::new();
    for bad in [
        json!({"op": "explode", "id": 5}),
        json!({"op": "ping", "id": {"nested": true}}),
        json!({"op": "subscribe", "channels": []}),
        json!({"op": "subscribe", "channels": ["token:not a token"]}),
        json!({"op": "subscribe", "id": 6, "channels": [42]}),
        json!({"op": "subscribe", "channels": (0..7).map(|n| format!("token:T{n}")).collect::<Vec<_>>()}),
    ] {
        codes.insert(talk.refused(Message::text(bad.to_string())).await);
    }
    codes.insert(talk.refused(Message::text("{not json")).await);
    let large = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(2000));
    codes.insert(talk.refused(Message::text(large)).await);
    codes.insert(talk.refused(Message::binary(vec![0xff, 0x00])).await);
    let expected = ["bad_channel", "bad_frame", "bad_json", "bad_request", "frame_too_large", "too_many_channels"];
    assert_eq!(codes, expected.into_iter().chain(["unknown_op"]).map(String::from).collect());

    // A client that subscribes to every token and reads nothing while a
    // burst comes: its backlog becomes `skipped` frames.
    let mut lagging = Client::connect_with_receive_buffer(port, 4096).await;
    let mut frames = std::mem::take(&mut talk.frames);
    frames.extend(lagging.subscribe(&["token:ETH", "token:BTC", "token:USDC", "token:SOL"]).await);
    let mut reader = talk.client.drain();

    // Act
    let burst = helpers::produce(&brokers, &names, 600, &stream_vars("max")).await;

    // Every frame both clients get until the stats follow the checkpoint
    // and their channels are quiet.
    let mut lagging = lagging.drain();
    wait_checkpointed(&names, delivered(&truth) + delivered(&burst), Duration::from_secs(90)).await;
    for client in [&mut reader, &mut lagging] {
        loop {
            match tokio::time::timeout(QUIET, client.0.recv()).await {
                Ok(Some(Got::Frame(frame))) => frames.push(frame),
                Ok(other) => panic!("a client's connection ended: {other:?}"),
                Err(_) => break,
            }
        }
    }

    // A connection over the limit per address is refused with the document's body.
    let third = Client::connect(port).await;
    let refusal = match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 429);
            serde_json::from_slice::<Value>(response.body().as_deref().unwrap_or_default()).expect("a JSON body")
        }
        other => panic!("the fourth connection was not refused: {:?}", other.map(|_| ())),
    };
    drop(third);

    // Assert: every frame matches the schema of its type; every type was sent.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for frame in &frames {
        let kind = frame["type"].as_str().unwrap_or_else(|| panic!("a frame without a type: {frame}"));
        let schema = contract.frames.get(kind).unwrap_or_else(|| panic!("a frame type not in the document: {frame}"));
        let errors = contract.errors(schema, frame);
        assert!(errors.is_empty(), "a {kind} frame does not match the document: {errors:?}\n{frame}");
        *seen.entry(kind.to_owned()).or_default() += 1;
    }
    println!("frames checked against the document, by type: {seen:?}");
    let documented: BTreeSet<&String> = contract.frames.keys().collect();
    assert_eq!(seen.keys().collect::<BTreeSet<_>>(), documented, "every frame type the document names was sent");
    assert!(frames.iter().any(|f| f["type"] == "subscribed" && f["seen"] == false));
    assert!(frames.iter().any(|f| f["type"] == "subscribed" && f["already"] == true));
    let refusal_schema = json!({"$ref": "#/components/schemas/UpgradeRefusal"});
    assert_eq!(contract.errors(&refusal_schema, &refusal), Vec::<String>::new(), "{refusal}");
    assert_eq!(refusal["error"]["code"], "too_many_connections");

    // Requests: the ones answered above, and a resume, match; malformed ones do not.
    sent.push(json!({"op": "subscribe", "id": 9, "channels": ["token:ETH", "pair:ETH-USDC"],
        "since": {"token:ETH": {"epoch": "1764831200123456", "offset": "1733312345123-0-2"}}}));
    for request in &sent {
        let schema = &contract.requests[request["op"].as_str().expect("an op")];
        assert_eq!(contract.errors(schema, request), Vec::<String>::new(), "{request}");
    }
    let subscribe = &contract.requests["subscribe"];
    for malformed in [
        json!({"op": "subscribe", "channels": "token:ETH"}),
        json!({"op": "subscribe", "channels": []}),
        json!({"op": "subscribe", "channels": ["candle:ETH"]}),
        json!({"op": "subscribe", "channels": ["token:ETH"], "id": "x".repeat(65)}),
        json!({"op": "subscribe", "channels": ["token:ETH"], "id": 1.5}),
        json!({"op": "subscribe", "channels": ["token:ETH"], "known_only": "yes"}),
        json!({"op": "subscribe", "channels": ["token:ETH"], "stray": true}),
        json!({"op": "subscribe", "channels": ["token:ETH"], "since": {"token:ETH": {"epoch": "1"}}}),
        json!({"op": "subscribe", "channels": ["token:ETH"], "since": {"token:ETH": {"epoch": "1", "offset": "7"}}}),
    ] {
        assert!(!contract.errors(subscribe, &malformed).is_empty(), "accepted: {malformed}");
    }
    assert!(!contract.errors(&contract.requests["ping"], &json!({"op": "pong"})).is_empty());
    consumer.kill9().await;
}
