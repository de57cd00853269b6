//! The test client: JSON text frames in and out over tokio-tungstenite.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test client: JSON text frames in and out.
pub(crate) struct Client {
    pub(crate) socket: Socket,
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

    pub(crate) async fn send(&mut self, value: Value) {
        self.socket.send(Message::text(value.to_string())).await.expect("sending");
    }

    pub(crate) async fn read(&mut self, timeout: Duration) -> Got {
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
    pub(crate) async fn frame(&mut self, timeout: Duration) -> Value {
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
pub(crate) struct Drained(pub(crate) tokio::sync::mpsc::UnboundedReceiver<Got>);

impl Drained {
    pub(crate) async fn frame(&mut self) -> Value {
        match self.0.recv().await {
            Some(Got::Frame(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The close code, skipping frames before it.
    pub(crate) async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.0.recv().await {
                Some(Got::Frame(_)) => {}
                Some(Got::Closed(code)) => return code,
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }
}
