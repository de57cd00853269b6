//! Behind trusted proxies the per-IP limits apply to the forwarded client
//! address; from any other peer `X-Forwarded-For` is ignored.

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::helpers::{api_vars, logged_port, Child, Names};
use crate::support::http;

async fn start_api(names: &Names, trusted: &str) -> (Child, u16) {
    let vars = api_vars(
        names,
        &[
            ("SWAPSTREAM_TRUSTED_PROXIES", trusted),
            ("SWAPSTREAM_RATE_LIMIT_PER_SEC", "1"),
            ("SWAPSTREAM_RATE_LIMIT_BURST", "4"),
            ("SWAPSTREAM_WS_MAX_CONNS_PER_IP", "1"),
        ],
    );
    let api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = logged_port(&api).await;
    (api, port)
}

async fn get_as(port: u16, client: &str) -> u16 {
    http::request(port, "GET", "/v1/tokens", &[("X-Forwarded-For", client)]).await.status
}

/// A WebSocket upgrade claiming to come from `client`: Ok, or the
/// refusal's status and error code.
async fn upgrade_as(
    port: u16,
    client: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, (u16, String)>
{
    let mut request = format!("ws://127.0.0.1:{port}/v1/ws").into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => {
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap_or_default();
            Err((response.status().as_u16(), body["error"]["code"].as_str().unwrap_or_default().to_owned()))
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

fn refused(code: &str) -> Option<(u16, String)> {
    Some((429, code.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limits() {
    let names = Names::new("it-proxies-trusted");
    let (mut api, port) = start_api(&names, "127.0.0.1/32").await;
    let (a, b) = ("203.0.113.1", "203.0.113.2");
    // Each request, upgrades included, takes one of a client's 4 tokens.
    let _held = upgrade_as(port, a).await.expect("a's first connection");
    assert_eq!(upgrade_as(port, a).await.err(), refused("too_many_connections"), "a's second passes the cap of 1");
    let _other = upgrade_as(port, b).await.expect("b is not counted as a");
    assert_eq!([get_as(port, a).await, get_as(port, a).await, get_as(port, a).await], [200, 200, 429]);
    assert_eq!(get_as(port, b).await, 200, "another client behind the same proxy has its own bucket");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn from_an_untrusted_peer_x_forwarded_for_is_ignored() {
    let names = Names::new("it-proxies-untrusted");
    let (mut api, port) = start_api(&names, "").await;
    let _held = upgrade_as(port, "203.0.113.1").await.expect("the first connection");
    assert_eq!(
        upgrade_as(port, "203.0.113.2").await.err(),
        refused("too_many_connections"),
        "the peer's cap, whatever the header says"
    );
    let statuses =
        [get_as(port, "203.0.113.3").await, get_as(port, "203.0.113.4").await, get_as(port, "203.0.113.5").await];
    assert_eq!(statuses, [200, 200, 429], "every claimed client shares the peer's bucket");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
