//! HTTP requests to a process on loopback (reqwest, HTTP/1.1): one fresh
//! connection a request, no redirects followed, nothing decompressed, so a
//! test sees what the server sent. Tests that send malformed bytes on
//! purpose keep their raw sockets, and read the answer with
//! [`Answer::parse`].

use std::time::Duration;

/// An HTTP answer: status, lower-case header names, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses a raw HTTP/1.1 response read to the end (de-chunked), for the
    /// tests that write their requests byte by byte.
    pub fn parse(raw: &[u8]) -> Answer {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.get(9..12)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
            let mut plain = Vec::new();
            let mut rest = &body[..];
            while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16).unwrap_or(0);
                if size == 0 {
                    break;
                }
                plain.extend_from_slice(&rest[end + 2..end + 2 + size]);
                rest = &rest[end + 2 + size + 2..];
            }
            body = plain;
        }
        Answer { status, headers, body }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// `method path` on 127.0.0.1:`port` with these extra headers; panics,
/// naming the request, when the server does not answer within 10 s.
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut request = client().request(method.clone(), format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path} on port {port}: no answer: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = response.bytes().await.unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}")).to_vec();
    Answer { status, headers, body }
}

/// `GET path`: status and body as text.
pub async fn get(port: u16, path: &str) -> (u16, String) {
    let answer = request(port, "GET", path, &[]).await;
    (answer.status, answer.text())
}

/// Writes `request` as it is (a test's hostile or malformed bytes) on a
/// fresh connection and reads the answer to the end (10 s at most).
pub async fn raw(port: u16, request: &[u8]) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connecting");
    stream.write_all(request).await.expect("writing the request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 10 s")
        .expect("reading the answer");
    assert!(!response.is_empty(), "connection closed without an answer");
    Answer::parse(&response)
}
