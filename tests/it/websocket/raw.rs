//! Raw sockets, on purpose: a client that stalls with a small receive
//! window, and hand-built (masked) frames for hostile input.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

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
pub(super) fn upgrade_and_subscribe(stream: &mut (impl Read + Write), port: u16, channel: &str) {
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
pub(super) fn masked_text(text: &str) -> Vec<u8> {
    masked_frame(0x1, text.as_bytes())
}

pub(super) fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
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
