//! The request protocol: ids echoed on every answer, a repeated subscribe
//! answered, `list_subscriptions`, and channels REST does not know marked,
//! or refused when the client asks for known ones only.

use std::time::Duration;

use serde_json::{json, Value};

use super::client::Client;
use super::{consumer_vars, start_consumer, stream_vars};
use crate::helpers::{self, delivered, require_broker, wait_checkpointed, Names};
use crate::support::http;

/// The next frame that answers a request: channel frames (`swap`, `stats`)
/// on the subscribed channels are passed over.
async fn answer(client: &mut Client) -> Value {
    loop {
        let frame = client.frame(Duration::from_secs(10)).await;
        if !matches!(frame["type"].as_str(), Some("swap" | "stats")) {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_answered_under_their_ids_and_unknown_channels_are_marked_or_refused() {
    let brokers = require_broker();
    let names = Names::new("it-ws-protocol");
    let (mut consumer, port) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let truth = helpers::produce(&brokers, &names, 40, &stream_vars("max")).await;
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(60)).await;
    let mut client = Client::connect(port).await;

    // A misspelt token: 404 on REST, an error frame on the WebSocket for a
    // client that asks for known channels only.
    assert_eq!(http::get(port, "/v1/tokens/ETHH/stats").await.0, 404);
    client.send(json!({"op": "subscribe", "id": "first", "channels": ["token:ETHH"], "known_only": true})).await;
    let refused = answer(&mut client).await;
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["channel"], &refused["id"]),
        (&json!("error"), &json!("unknown_channel"), &json!("token:ETHH"), &json!("first")),
        "{refused}"
    );

    // A seen token: its snapshot, under the request's id.
    client.send(json!({"op": "subscribe", "id": 1, "channels": ["token:eth"], "known_only": true})).await;
    let subscribed = answer(&mut client).await;
    assert!(subscribed.get("seen").is_none(), "{subscribed}");
    assert_eq!(
        (&subscribed["type"], &subscribed["seq"], &subscribed["id"]),
        (&json!("subscribed"), &json!(0), &json!(1))
    );
    assert!(subscribed["snapshot"]["totals"]["swaps"].as_u64() > Some(0), "{subscribed}");

    // Again: answered, and the channel goes on (no second snapshot).
    client.send(json!({"op": "subscribe", "id": 2, "channels": ["TOKEN:ETH"]})).await;
    assert_eq!(
        answer(&mut client).await,
        json!({"type": "subscribed", "channel": "token:ETH", "already": true, "id": 2})
    );

    // A token without swaps yet: subscribed, and marked as such.
    client.send(json!({"op": "subscribe", "id": 3, "channels": ["token:NEWT"]})).await;
    let unseen = answer(&mut client).await;
    assert_eq!(unseen["seen"], false, "{unseen}");
    assert_eq!(
        (&unseen["type"], &unseen["channel"], &unseen["id"]),
        (&json!("subscribed"), &json!("token:NEWT"), &json!(3))
    );
    assert_eq!(unseen["snapshot"]["totals"]["swaps"], 0, "{unseen}");

    client.send(json!({"op": "list_subscriptions", "id": 4})).await;
    assert_eq!(
        answer(&mut client).await,
        json!({"type": "subscriptions", "channels": ["token:ETH", "token:NEWT"], "id": 4})
    );
    client.send(json!({"op": "unsubscribe", "id": 5, "channels": ["token:NEWT"]})).await;
    assert_eq!(answer(&mut client).await, json!({"type": "unsubscribed", "channel": "token:NEWT", "id": 5}));
    client.send(json!({"op": "list_subscriptions"})).await;
    assert_eq!(answer(&mut client).await, json!({"type": "subscriptions", "channels": ["token:ETH"]}));
    client.send(json!({"op": "ping", "id": "p-1"})).await;
    assert_eq!(answer(&mut client).await, json!({"type": "pong", "id": "p-1"}));

    // Errors echo the id when it could be read, and say what was wrong.
    client.send(json!({"op": "explode", "id": 6})).await;
    let unknown_op = answer(&mut client).await;
    assert_eq!((&unknown_op["code"], &unknown_op["id"]), (&json!("unknown_op"), &json!(6)), "{unknown_op}");
    client.send(json!({"op": "ping", "id": {"nested": true}})).await;
    let bad_id = answer(&mut client).await;
    assert_eq!(bad_id["code"], "bad_request", "{bad_id}");
    assert!(bad_id["message"].as_str().is_some_and(|m| m.contains("`id`")), "{bad_id}");
    assert!(bad_id.get("id").is_none(), "{bad_id}");
    client.send(json!({"op": "subscribe", "id": 7, "channels": ["token:ETH"], "known_only": "yes"})).await;
    let bad_flag = answer(&mut client).await;
    assert_eq!((&bad_flag["code"], &bad_flag["id"]), (&json!("bad_request"), &json!(7)), "{bad_flag}");
    consumer.kill9().await;
}
