//! What the server writes on a WebSocket, shared by the registry, the
//! sessions and the outbound queues: close codes, the channel frames (built
//! by plain copies, once per frame and subscriber), their sizes on the wire,
//! the handoffs that carry them to subscribers, and channel names.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use serde_json::value::RawValue;

use crate::domain::aggregate::Interval;
use crate::domain::partial::AggKey;
use crate::storage::redis::Offset;

/// Close codes beyond RFC 6455's.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
pub const CLOSE_PING_TIMEOUT: u16 = 4000;

/// The size of a server frame (unmasked) with `payload` bytes on the wire.
pub fn frame_len(payload: usize) -> i64 {
    let header = if payload < 126 {
        2
    } else if payload <= 65_535 {
        4
    } else {
        10
    };
    (payload + header) as i64
}

/// What a `swap` or `stats` frame carries, serialized once for every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Swap,
    Stats,
    Candle,
}

impl FrameKind {
    fn name(self) -> &'static str {
        match self {
            FrameKind::Swap => "swap",
            FrameKind::Stats => "stats",
            FrameKind::Candle => "candle",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FrameBody {
    pub kind: FrameKind,
    pub json: Arc<str>,
    /// A swap's place in its channel's history (stats frames have none).
    pub offset: Option<Offset>,
}

impl FrameBody {
    pub fn swap(json: Arc<str>, offset: Offset) -> FrameBody {
        FrameBody { kind: FrameKind::Swap, json, offset: Some(offset) }
    }

    pub fn stats(json: Arc<str>) -> FrameBody {
        FrameBody { kind: FrameKind::Stats, json, offset: None }
    }

    pub fn candle(json: Arc<str>) -> FrameBody {
        FrameBody { kind: FrameKind::Candle, json, offset: None }
    }
}

/// Appends the swap frames of a history entry's `swaps`, the first of them
/// after `at` (an entry and how many of its swaps come before).
pub fn swap_frames(at: Offset, swaps: &[&RawValue], frames: &mut Vec<FrameBody>) {
    for (count, swap) in (at.count + 1..).zip(swaps) {
        frames.push(FrameBody::swap(swap.get().into(), Offset { count, ..at }));
    }
}

/// Writes `{"type":..,"channel":..,"seq":..,["offset":..,]"swap"|"stats":..}`:
/// once per frame and subscriber, so by plain copies rather than `format!`.
pub fn channel_frame(frame: &FrameBody, channel: &str, seq: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let seq = digits.format(seq);
    let name = frame.kind.name();
    let offset = frame.offset.map(|o| o.to_string());
    let mut text = String::with_capacity(channel_frame_len(frame, channel) + seq.len());
    for part in [r#"{"type":""#, name, r#"","channel":""#, channel, r#"","seq":"#, seq] {
        text.push_str(part);
    }
    if let Some(offset) = &offset {
        text.push_str(r#","offset":""#);
        text.push_str(offset);
        text.push('"');
    }
    for part in [r#",""#, name, r#"":"#, &frame.json, "}"] {
        text.push_str(part);
    }
    text
}

/// Bytes (estimated) of the handoffs alive in this process: the channel
/// frames queued for any client, each counted once however many clients it
/// waits for.
static HANDOFF_BYTES: AtomicI64 = AtomicI64::new(0);

/// What the frames queued for WebSocket clients take, each frame once.
pub fn queued_frame_bytes() -> i64 {
    HANDOFF_BYTES.load(Ordering::Acquire)
}

/// New frames of one channel, in order, as the registry hands them to every
/// subscriber (one allocation shared by all).
#[derive(Debug)]
pub struct Handoff {
    pub key: ChannelKey,
    pub frames: Vec<FrameBody>,
    /// The bytes the frames take on the wire, with a one-digit `seq`.
    pub estimate: i64,
    /// When the oldest update among the frames arrived over pub/sub (live
    /// swap frames only): the start of the fan-out's own latency.
    pub arrived: Option<Instant>,
}

impl Handoff {
    pub fn new(key: ChannelKey, channel: &str, frames: Vec<FrameBody>) -> Handoff {
        let estimate = frames.iter().map(|f| frame_len(channel_frame_len(f, channel) + 1)).sum();
        HANDOFF_BYTES.fetch_add(estimate, Ordering::AcqRel);
        Handoff { key, frames, estimate, arrived: None }
    }

    /// The handoff of live frames whose oldest update arrived at `arrived`.
    pub fn arrived(mut self, arrived: Option<Instant>) -> Handoff {
        self.arrived = arrived;
        self
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        HANDOFF_BYTES.fetch_sub(self.estimate, Ordering::AcqRel);
    }
}

/// A frame's length without its `seq` digits.
pub fn channel_frame_len(frame: &FrameBody, channel: &str) -> usize {
    // `{"type":"","channel":"","seq":,"":}` is 35 bytes, `,"offset":""` 12.
    let offset = frame.offset.map_or(0, |offset| 12 + offset.text_len());
    35 + 2 * frame.kind.name().len() + channel.len() + frame.json.len() + offset
}

/// Registry -> session (frames go through the connection's queue instead).
#[derive(Message)]
#[rtype(result = "()")]
pub enum Outbound {
    /// Close with this code and reason, then stop.
    Close { code: u16, reason: &'static str },
}

/// A WebSocket channel: a token's or pair's swaps and stats
/// (`token:ETH`, `pair:ETH-USDC`), or its candles of one interval
/// (`candles:ETH:1m`, `candles:ETH-USDC:1h`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChannelKey {
    Live(AggKey),
    Candles(AggKey, Interval),
}

impl ChannelKey {
    /// The token or pair whose updates the channel follows.
    pub fn agg(&self) -> &AggKey {
        match self {
            ChannelKey::Live(key) | ChannelKey::Candles(key, _) => key,
        }
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelKey::Live(key) => write!(f, "{key}"),
            ChannelKey::Candles(AggKey::Token(token), interval) => write!(f, "candles:{token}:{interval}"),
            ChannelKey::Candles(AggKey::Pair(pair), interval) => write!(f, "candles:{pair}:{interval}"),
        }
    }
}

/// `token:eth`, `TOKEN:ETH`, `pair:usdc-eth`, `candles:eth:1m`,
/// `candles:usdc-eth:1h` -> the canonical key.
pub fn parse_channel(name: &str) -> Option<ChannelKey> {
    let (kind, rest) = name.split_once(':')?;
    let kind = kind.to_ascii_lowercase();
    if kind != "candles" {
        return AggKey::parse(&format!("{kind}:{rest}")).map(ChannelKey::Live);
    }
    let (of, interval) = rest.rsplit_once(':')?;
    let interval = Interval::parse(&interval.to_ascii_lowercase())?;
    let key =
        if of.contains('-') { AggKey::parse(&format!("pair:{of}")) } else { AggKey::parse(&format!("token:{of}")) };
    Some(ChannelKey::Candles(key?, interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_read_in_any_case_and_written_canonically() {
        let canonical = |name: &str| parse_channel(name).map(|key| key.to_string());
        assert_eq!(canonical("TOKEN:eth").as_deref(), Some("token:ETH"));
        assert_eq!(canonical("pair:usdc-eth").as_deref(), Some("pair:ETH-USDC"));
        assert_eq!(canonical("candles:eth:1m").as_deref(), Some("candles:ETH:1m"));
        assert_eq!(canonical("Candles:usdc-ETH:1H").as_deref(), Some("candles:ETH-USDC:1h"));
        for bad in ["candles:ETH", "candles:ETH:2m", "candles::1m", "candle:ETH:1m", "token:", "stats:ETH"] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
        let key = parse_channel("candles:ETH-USDC:5m").unwrap();
        assert_eq!(key.agg().to_string(), "pair:ETH-USDC");
    }

    #[test]
    fn a_channel_frame_is_the_protocol_object_and_the_estimate_its_size() {
        let swap = r#"{"tx_hash":"0xab","status":"pending"}"#;
        let offset: Offset = "1733312345123-1234567890123-12".parse().expect("an offset");
        let frame = FrameBody::swap(swap.into(), offset);
        let text = channel_frame(&frame, "token:ETH", 7);
        assert_eq!(
            text,
            r#"{"type":"swap","channel":"token:ETH","seq":7,"offset":"1733312345123-1234567890123-12","swap":{"tx_hash":"0xab","status":"pending"}}"#
        );
        let stats = channel_frame(&FrameBody::stats("{}".into()), "pair:ETH-USDC", 1_234_567);
        assert_eq!(stats, r#"{"type":"stats","channel":"pair:ETH-USDC","seq":1234567,"stats":{}}"#);

        // Exact for a one-digit seq, which the session corrects when it writes.
        let key = parse_channel("token:ETH").expect("a channel");
        let handoff = Handoff::new(key, "token:ETH", vec![frame.clone(), frame]);
        assert_eq!(handoff.estimate, 2 * frame_len(text.len()));
    }
}
