//! The outbound queue of one WebSocket connection: the channel frames the
//! registry handed on and the connection's writer (its response body, see
//! `http::ws`) has not taken yet.
//!
//! The queue is the one place that counts a connection's waiting bytes and
//! decides what happens when there are too many: the registry pushes into
//! it without waiting, the writer takes frames from it only as fast as the
//! HTTP layer writes them to the socket, and the session actor opens,
//! starts and removes channels in it. `seq` is assigned here, as a frame
//! is taken, so the numbers follow what the client really gets.
//!
//! Past `SWAPSTREAM_WS_QUEUE_BYTES` the queue conflates instead of evicting:
//! the channels with the most bytes waiting, largest first, until at most
//! half the cap waits, have their queued frames replaced by one `skipped`
//! frame that gives the `seq` range the dropped frames had, how many of them
//! were swaps, and the channel's newest stats object. A client that makes no
//! write progress at all is still evicted by the registry (write deadline,
//! total budget); a client that reads but lags loses detail, not its
//! connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix_web::web::BytesMut;
use litemap::LiteMap;

use super::protocol::{channel_frame, channel_frame_len, frame_len, ChannelKey, FrameBody, FrameKind, Handoff};
use crate::storage::redis::Offset;

/// What a connection's writer took from its queue in one go.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Encoded WebSocket frames, ready for the socket.
    pub bytes: usize,
    /// When the updates of the live swap frames among them arrived over
    /// pub/sub, one per handoff they came from.
    pub arrivals: Vec<Instant>,
    /// What those frames counted for in the queue (estimates).
    pub estimate: i64,
    pub swaps: u64,
    pub stats: u64,
    pub candles: u64,
    pub skipped: u64,
}

/// What a push did to the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The frames were queued (false: closed, or not subscribed to the channel).
    pub queued: bool,
    /// Change of the queue's bytes (estimates), conflation included.
    pub bytes: i64,
    /// Channels whose backlog was replaced by a `skipped` frame.
    pub conflations: u64,
    /// Swap frames dropped by those conflations.
    pub conflated_swaps: u64,
}

pub struct OutQueue {
    /// Bytes (estimated) past which the backlog is conflated.
    cap: i64,
    /// A sorted vector, not a hash table: most connections hold one channel,
    /// and an idle connection should cost little (a table, like a vector
    /// that grows, starts with room for 4). A lookup is a binary search; an
    /// insertion shifts what sorts after it, about 50 ms in all for the
    /// 10,000 channels a connection may hold at most.
    channels: LiteMap<ChannelKey, ChannelOut>,
    /// Live channels with something queued, taken from in turn.
    ready: VecDeque<ChannelKey>,
    bytes: i64,
    closed: bool,
}

struct ChannelOut {
    name: Arc<str>,
    /// `None` until the `subscribed` frame (seq 0) went out; frames wait meanwhile.
    next_seq: Option<u64>,
    entries: VecDeque<Entry>,
    bytes: i64,
    /// The newest stats object the client has or is about to get: the
    /// subscription's snapshot, then every `stats` frame taken.
    stats: Option<Arc<str>>,
    in_ready: bool,
}

enum Entry {
    /// A handoff's frames from `next` on.
    Frames {
        handoff: Arc<Handoff>,
        next: usize,
    },
    /// Updates were lost here: one `seq` is skipped.
    Gap,
    Skipped(Skipped),
}

/// Frames dropped by conflation, told to the client as one `skipped` frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Skipped {
    /// Frames dropped (swap and stats); they take this many `seq` numbers.
    frames: u64,
    /// Of which swap frames.
    swaps: u64,
    /// Gaps folded in: skipped `seq` numbers before the range.
    gaps: u64,
    /// The newest stats object among the dropped frames.
    stats: Option<Arc<str>>,
    /// The offset of the newest swap dropped.
    offset: Option<Offset>,
    estimate: i64,
}

/// The wire size of one frame as [`Handoff::estimate`] counts it.
fn frame_estimate(channel: &str, frame: &FrameBody) -> i64 {
    frame_len(channel_frame_len(frame, channel) + 1)
}

/// What a `skipped` frame says: the `seq` range its dropped frames had,
/// how many were swaps, the offset of the newest swap, the newest stats.
struct SkippedFrame<'a> {
    seq: u64,
    from_seq: u64,
    to_seq: u64,
    count: u64,
    offset: Option<Offset>,
    stats: &'a str,
}

/// `{"type":"skipped","channel":..,"seq":..,"from_seq":..,"to_seq":..,"count":..,["offset":..,]"stats":..}`
fn skipped_frame(channel: &str, frame: &SkippedFrame) -> String {
    let mut text = String::with_capacity(skipped_frame_len(channel, frame.stats.len()) + 40);
    let mut digits = itoa::Buffer::new();
    text.push_str(r#"{"type":"skipped","channel":""#);
    text.push_str(channel);
    for (field, value) in [
        (r#"","seq":"#, frame.seq),
        (r#","from_seq":"#, frame.from_seq),
        (r#","to_seq":"#, frame.to_seq),
        (r#","count":"#, frame.count),
    ] {
        text.push_str(field);
        text.push_str(digits.format(value));
    }
    if let Some(offset) = frame.offset {
        text.push_str(r#","offset":""#);
        text.push_str(&offset.to_string());
        text.push('"');
    }
    text.push_str(r#","stats":"#);
    text.push_str(frame.stats);
    text.push('}');
    text
}

/// A `skipped` frame's length without its numbers' digits, with an offset.
fn skipped_frame_len(channel: &str, stats: usize) -> usize {
    // `{"type":"skipped","channel":"","seq":,"from_seq":,"to_seq":,"count":,"stats":}` is 79 bytes,
    // `,"offset":""` 12 and the offset's digits 30 at most.
    121 + channel.len() + stats
}

/// Appends `text` as one unmasked text frame (what a server sends).
fn put_text_frame(out: &mut BytesMut, text: &str) {
    let len = text.len();
    out.reserve(frame_len(len) as usize);
    out.extend_from_slice(&[0x81]);
    if len < 126 {
        out.extend_from_slice(&[len as u8]);
    } else if len <= 65_535 {
        out.extend_from_slice(&[126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(text.as_bytes());
}

/// What a resuming client missed, in order: lost states (a skipped `seq`)
/// and swap frames.
pub enum Replayed {
    Gap,
    Swaps(Vec<FrameBody>),
}

impl Entry {
    /// The bytes it counts for in the queue.
    fn estimate(&self, channel: &str) -> i64 {
        match self {
            Entry::Gap => 0,
            Entry::Frames { handoff, next } => handoff.frames[*next..].iter().map(|f| frame_estimate(channel, f)).sum(),
            Entry::Skipped(skipped) => skipped.estimate,
        }
    }
}

impl ChannelOut {
    /// Drops the queued swap frames at or before `floor`.
    fn drop_covered(&mut self, key: &ChannelKey, floor: Offset) {
        for entry in &mut self.entries {
            let Entry::Frames { handoff, next } = entry else { continue };
            let newer = |frame: &&FrameBody| frame.offset.is_none_or(|offset| offset > floor);
            if handoff.frames[*next..].iter().all(|frame| newer(&frame)) {
                continue;
            }
            let kept: Vec<FrameBody> = handoff.frames[*next..].iter().filter(newer).cloned().collect();
            let kept = Handoff::new(key.clone(), &self.name, kept).arrived(handoff.arrived);
            *entry = Entry::Frames { handoff: Arc::new(kept), next: 0 };
        }
        self.entries.retain(|entry| !matches!(entry, Entry::Frames { handoff, .. } if handoff.frames.is_empty()));
    }

    /// Replaces every queued entry with one `skipped` entry; returns the
    /// change of bytes and the swap frames dropped now (`None` when no frame
    /// was dropped, as for a lone `skipped` entry).
    fn conflate(&mut self) -> (i64, Option<u64>) {
        let mut skipped = Skipped::default();
        let mut new_swaps = 0;
        let mut dropped_any = false;
        for entry in self.entries.drain(..) {
            match entry {
                Entry::Gap => skipped.gaps += 1,
                Entry::Skipped(earlier) => {
                    skipped.frames += earlier.frames;
                    skipped.swaps += earlier.swaps;
                    skipped.gaps += earlier.gaps;
                    if earlier.stats.is_some() {
                        skipped.stats = earlier.stats;
                    }
                    skipped.offset = skipped.offset.max(earlier.offset);
                }
                Entry::Frames { handoff, next } => {
                    for frame in &handoff.frames[next..] {
                        dropped_any = true;
                        skipped.frames += 1;
                        match frame.kind {
                            FrameKind::Swap => new_swaps += 1,
                            FrameKind::Stats => skipped.stats = Some(frame.json.clone()),
                            FrameKind::Candle => {}
                        }
                        skipped.offset = skipped.offset.max(frame.offset);
                    }
                }
            }
        }
        skipped.swaps += new_swaps;
        let before = self.bytes;
        let stats_len = skipped.stats.as_ref().or(self.stats.as_ref()).map_or(0, |s| s.len());
        // Seven digits for each of the four numbers.
        skipped.estimate = frame_len(skipped_frame_len(&self.name, stats_len) + 28);
        self.bytes = skipped.estimate;
        self.entries.push_back(Entry::Skipped(skipped));
        (self.bytes - before, dropped_any.then_some(new_swaps))
    }
}

impl OutQueue {
    pub fn new(cap: usize) -> OutQueue {
        OutQueue {
            cap: i64::try_from(cap).unwrap_or(i64::MAX),
            channels: LiteMap::with_capacity(1),
            ready: VecDeque::with_capacity(1),
            bytes: 0,
            closed: false,
        }
    }

    /// Bytes (estimated) waiting in the queue.
    pub fn bytes(&self) -> i64 {
        self.bytes
    }

    /// Starts taking frames of `key`; they wait until [`Self::start`].
    pub fn open(&mut self, key: ChannelKey, name: Arc<str>) {
        if self.closed {
            return;
        }
        self.channels.entry(key).or_insert_with(|| ChannelOut {
            name,
            next_seq: None,
            // Room for one, like the maps: what an idle channel keeps.
            entries: VecDeque::with_capacity(1),
            bytes: 0,
            stats: None,
            in_ready: false,
        });
    }

    /// The `subscribed` frame (seq 0, with `snapshot`) went out: the
    /// channel's frames follow from seq 1, the `replay` of what the client
    /// missed first, then the frames queued meanwhile that come after
    /// `floor` (the replay and the snapshot's position cover the others).
    pub fn start(&mut self, key: &ChannelKey, snapshot: Arc<str>, floor: Offset, replay: Vec<Replayed>) -> Pushed {
        let mut pushed = Pushed::default();
        let Some(channel) = self.channels.get_mut(key) else { return pushed };
        let before = channel.bytes;
        channel.drop_covered(key, floor);
        for replayed in replay.into_iter().rev() {
            channel.entries.push_front(match replayed {
                Replayed::Gap => Entry::Gap,
                Replayed::Swaps(frames) => {
                    Entry::Frames { handoff: Arc::new(Handoff::new(key.clone(), &channel.name, frames)), next: 0 }
                }
            });
        }
        channel.bytes = channel.entries.iter().map(|entry| entry.estimate(&channel.name)).sum();
        pushed.bytes = channel.bytes - before;
        self.bytes += pushed.bytes;
        channel.next_seq = Some(1);
        channel.stats = Some(snapshot);
        if !channel.entries.is_empty() && !channel.in_ready {
            channel.in_ready = true;
            self.ready.push_back(key.clone());
        }
        self.conflate_if_over(&mut pushed);
        pushed
    }

    /// Forgets `key` and what waits for it; returns the change of bytes.
    pub fn remove(&mut self, key: &ChannelKey) -> i64 {
        let Some(channel) = self.channels.remove(key) else { return 0 };
        if channel.in_ready {
            self.ready.retain(|k| k != key);
        }
        self.bytes -= channel.bytes;
        -channel.bytes
    }

    /// Drops everything and takes nothing more; returns the change of bytes.
    pub fn close(&mut self) -> i64 {
        self.closed = true;
        self.channels.clear();
        self.ready.clear();
        std::mem::take(&mut self.bytes).wrapping_neg()
    }

    /// Queues the frames of one channel, then conflates if the queue holds
    /// more than its cap.
    pub fn push(&mut self, handoff: Arc<Handoff>) -> Pushed {
        let mut pushed = Pushed::default();
        if self.closed || handoff.frames.is_empty() {
            return pushed;
        }
        let Some(channel) = self.channels.get_mut(&handoff.key) else { return pushed };
        pushed.queued = true;
        pushed.bytes = handoff.estimate;
        channel.bytes += handoff.estimate;
        self.bytes += handoff.estimate;
        let key = handoff.key.clone();
        channel.entries.push_back(Entry::Frames { handoff, next: 0 });
        if channel.next_seq.is_some() && !channel.in_ready {
            channel.in_ready = true;
            self.ready.push_back(key);
        }
        self.conflate_if_over(&mut pushed);
        pushed
    }

    /// Conflates if the queue holds more than its cap, adding what that did
    /// to `pushed`.
    fn conflate_if_over(&mut self, pushed: &mut Pushed) {
        if self.bytes > self.cap {
            let (bytes, conflations, swaps) = self.conflate();
            pushed.bytes += bytes;
            pushed.conflations = conflations;
            pushed.conflated_swaps = swaps;
        }
    }

    /// Updates of `only` (or of every channel) were lost: each skips a `seq`
    /// after what is queued now.
    pub fn gap(&mut self, only: Option<&ChannelKey>) {
        for (key, channel) in &mut self.channels {
            if only.is_some_and(|only| only != key) {
                continue;
            }
            channel.entries.push_back(Entry::Gap);
            if channel.next_seq.is_some() && !channel.in_ready {
                channel.in_ready = true;
                self.ready.push_back(key.clone());
            }
        }
    }

    /// Replaces the backlog of the channels with the most bytes waiting,
    /// largest first, until at most half the cap waits (or nothing more can
    /// be dropped). Returns the change of bytes, the channels conflated and
    /// the swap frames dropped.
    fn conflate(&mut self) -> (i64, u64, u64) {
        let mut by_size: Vec<(i64, ChannelKey)> =
            self.channels.iter().filter(|(_, c)| c.bytes > 0).map(|(k, c)| (c.bytes, k.clone())).collect();
        by_size.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let (mut change, mut conflations, mut swaps) = (0, 0, 0);
        for (_, key) in by_size {
            if self.bytes <= self.cap / 2 {
                break;
            }
            let Some(channel) = self.channels.get_mut(&key) else { continue };
            let (bytes, dropped) = channel.conflate();
            self.bytes += bytes;
            change += bytes;
            if let Some(dropped) = dropped {
                conflations += 1;
                swaps += dropped;
            }
        }
        (change, conflations, swaps)
    }

    /// Encodes frames of the live channels, in turn, into `out` until it
    /// holds `budget` bytes or nothing is left.
    pub fn take(&mut self, budget: usize, out: &mut BytesMut) -> Taken {
        let start = out.len();
        let mut taken = Taken::default();
        while out.len() - start < budget {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(channel) = self.channels.get_mut(&key) else { continue };
            let (Some(next_seq), Some(entry)) = (channel.next_seq.as_mut(), channel.entries.front_mut()) else {
                channel.in_ready = false;
                continue;
            };
            let (estimate, finished) = match entry {
                Entry::Gap => {
                    *next_seq += 1;
                    (0, true)
                }
                // As much of the handoff as the budget allows, then the next channel's turn.
                Entry::Frames { handoff, next } => {
                    taken.arrivals.extend(handoff.arrived.filter(|_| *next < handoff.frames.len()));
                    let mut estimate = 0;
                    while *next < handoff.frames.len() && out.len() - start < budget {
                        let frame = &handoff.frames[*next];
                        put_text_frame(out, &channel_frame(frame, &channel.name, *next_seq));
                        *next_seq += 1;
                        match frame.kind {
                            FrameKind::Swap => taken.swaps += 1,
                            FrameKind::Stats => {
                                taken.stats += 1;
                                channel.stats = Some(frame.json.clone());
                            }
                            FrameKind::Candle => taken.candles += 1,
                        }
                        estimate += frame_estimate(&channel.name, frame);
                        *next += 1;
                    }
                    (estimate, *next == handoff.frames.len())
                }
                Entry::Skipped(skipped) if skipped.frames == 0 => {
                    *next_seq += skipped.gaps;
                    (skipped.estimate, true)
                }
                Entry::Skipped(skipped) => {
                    let from = *next_seq + skipped.gaps;
                    let to = from + skipped.frames - 1;
                    let stats = skipped.stats.take().or_else(|| channel.stats.clone());
                    let frame = SkippedFrame {
                        seq: to + 1,
                        from_seq: from,
                        to_seq: to,
                        count: skipped.swaps,
                        offset: skipped.offset,
                        stats: stats.as_deref().unwrap_or("null"),
                    };
                    put_text_frame(out, &skipped_frame(&channel.name, &frame));
                    *next_seq = to + 2;
                    if stats.is_some() {
                        channel.stats = stats;
                    }
                    taken.skipped += 1;
                    (skipped.estimate, true)
                }
            };
            if finished {
                channel.entries.pop_front();
            }
            channel.bytes -= estimate;
            self.bytes -= estimate;
            taken.estimate += estimate;
            if channel.entries.is_empty() {
                channel.in_ready = false;
            } else {
                self.ready.push_back(key);
            }
        }
        taken.bytes = out.len() - start;
        taken
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn key(name: &str) -> ChannelKey {
        crate::actors::ws::protocol::parse_channel(name).expect("a channel")
    }

    fn swap(n: u32) -> FrameBody {
        let json = format!(r#"{{"tx_hash":"0x{n:064x}","status":"confirmed"}}"#);
        FrameBody::swap(json.into(), Offset { ms: u64::from(n), seq: 0, count: 1 })
    }

    fn stats(swaps: u32) -> FrameBody {
        FrameBody::stats(format!(r#"{{"totals":{{"swaps":{swaps}}}}}"#).into())
    }

    fn handoff(channel: &str, frames: Vec<FrameBody>) -> Arc<Handoff> {
        Arc::new(Handoff::new(key(channel), channel, frames))
    }

    /// Everything the queue gives, decoded from the wire form.
    fn take_all(queue: &mut OutQueue) -> Vec<Value> {
        let mut out = BytesMut::new();
        let taken = queue.take(usize::MAX, &mut out);
        assert_eq!(taken.bytes, out.len());
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0x81, "one unmasked text frame");
            let (len, header) = match rest[1] {
                126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
                n => (n as usize, 2),
            };
            frames.push(serde_json::from_slice(&rest[header..header + len]).expect("JSON"));
            rest = &rest[header + len..];
        }
        frames
    }

    #[test]
    fn frames_wait_for_the_subscription_then_go_out_numbered_from_one() {
        let mut queue = OutQueue::new(1 << 20);
        assert!(!queue.push(handoff("token:ETH", vec![swap(1)])).queued, "not subscribed: dropped");
        queue.open(key("token:ETH"), "token:ETH".into());
        assert!(queue.push(handoff("token:ETH", vec![swap(1), swap(2)])).queued);
        queue.gap(None);
        queue.push(handoff("token:ETH", vec![stats(2)]));
        assert!(take_all(&mut queue).is_empty(), "nothing before the subscribed frame");
        assert!(queue.bytes() > 0);

        queue.start(&key("token:ETH"), r#"{"totals":{"swaps":0}}"#.into(), Offset::ZERO, Vec::new());
        let frames = take_all(&mut queue);
        let seqs: Vec<(&str, u64)> =
            frames.iter().map(|f| (f["type"].as_str().unwrap(), f["seq"].as_u64().unwrap())).collect();
        assert_eq!(seqs, [("swap", 1), ("swap", 2), ("stats", 4)], "the gap skips seq 3");
        assert_eq!(queue.bytes(), 0, "the estimates balance");
    }

    #[test]
    fn a_take_tells_when_the_live_updates_it_writes_arrived_once_per_handoff() {
        let mut queue = OutQueue::new(1 << 20);
        queue.open(key("token:ETH"), "token:ETH".into());
        queue.start(&key("token:ETH"), r#"{"totals":{"swaps":0}}"#.into(), Offset::ZERO, Vec::new());
        let (early, late) = (Instant::now(), Instant::now() + std::time::Duration::from_millis(5));
        let live = |frames, at| Arc::new(Handoff::new(key("token:ETH"), "token:ETH", frames).arrived(Some(at)));
        queue.push(live(vec![swap(1), swap(2)], early));
        queue.push(handoff("token:ETH", vec![stats(2)]));
        queue.push(live(vec![swap(3)], late));
        // The first frame alone, then the rest: the first handoff is timed
        // with each part of it written, the state frame not at all.
        let one = handoff("token:ETH", vec![swap(1)]).estimate as usize;
        let mut out = BytesMut::new();
        assert_eq!(queue.take(one - 1, &mut out).arrivals, [early]);
        assert_eq!(queue.take(usize::MAX, &mut out).arrivals, [early, late]);
        assert!(queue.take(usize::MAX, &mut out).arrivals.is_empty());
    }

    #[test]
    fn past_the_cap_a_backlog_becomes_one_skipped_frame_with_its_range_count_and_newest_stats() {
        let one = handoff("token:ETH", vec![swap(0)]).estimate;
        // Room for ten swap frames.
        let mut queue = OutQueue::new(10 * one as usize);
        for channel in ["token:ETH", "token:BTC"] {
            queue.open(key(channel), channel.into());
            queue.start(&key(channel), r#"{"totals":{"swaps":0}}"#.into(), Offset::ZERO, Vec::new());
        }
        // Three frames go out before the client falls behind.
        queue.push(handoff("token:ETH", vec![swap(1), swap(2), swap(3)]));
        assert_eq!(take_all(&mut queue).len(), 3);

        queue.push(handoff("token:BTC", vec![swap(100)]));
        let mut conflated = Vec::new();
        for n in 4..=13 {
            let frames = if n == 8 { vec![swap(n), stats(7)] } else { vec![swap(n)] };
            let pushed = queue.push(handoff("token:ETH", frames));
            assert!(pushed.queued);
            if pushed.conflations > 0 {
                conflated.push((n, pushed));
            }
        }
        // BTC's frame, ETH's 4..=11, the stats frame (smaller than a swap's)
        // and 12 pass the cap; ETH is the largest and alone is enough.
        assert_eq!(conflated.len(), 1, "{conflated:?}");
        let (at, pushed) = &conflated[0];
        assert_eq!((*at, pushed.conflations, pushed.conflated_swaps), (12, 1, 9));
        assert!(pushed.bytes < 0);
        assert!(queue.bytes() <= 5 * one, "at most half the cap is left");

        let frames = take_all(&mut queue);
        let eth: Vec<&Value> = frames.iter().filter(|f| f["channel"] == "token:ETH").collect();
        assert_eq!(eth.len(), 2);
        assert_eq!(eth[0]["type"], "skipped");
        // Swaps 4..=8 took seq 4..=8, the stats frame 9, swaps 9..=12 took 10..=13.
        assert_eq!((&eth[0]["from_seq"], &eth[0]["to_seq"], &eth[0]["seq"]), (&4.into(), &13.into(), &14.into()));
        assert_eq!(eth[0]["count"], 9, "the stats frame in the range is not a swap");
        assert_eq!(eth[0]["stats"]["totals"]["swaps"], 7, "the newest stats object dropped");
        assert_eq!((&eth[1]["type"], &eth[1]["seq"]), (&"swap".into(), &15.into()));
        assert_eq!(eth[1]["swap"]["tx_hash"], format!("0x{:064x}", 13));
        let btc: Vec<&Value> = frames.iter().filter(|f| f["channel"] == "token:BTC").collect();
        assert_eq!((btc.len(), &btc[0]["type"], &btc[0]["seq"]), (1, &"swap".into(), &1.into()), "BTC kept its frame");
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn conflating_again_extends_the_range_and_a_gap_inside_it_stays_a_gap() {
        let one = handoff("token:ETH", vec![swap(0)]).estimate;
        let mut queue = OutQueue::new(4 * one as usize);
        queue.open(key("token:ETH"), "token:ETH".into());
        // Still waiting for its snapshot: frames and a gap pile up.
        for n in 1..=3 {
            queue.push(handoff("token:ETH", vec![swap(n)]));
        }
        queue.gap(Some(&key("token:ETH")));
        let mut swaps = 0;
        for n in 4..=20 {
            swaps += queue.push(handoff("token:ETH", vec![swap(n)])).conflated_swaps;
        }
        queue.start(&key("token:ETH"), r#"{"totals":{"swaps":0}}"#.into(), Offset::ZERO, Vec::new());
        let frames = take_all(&mut queue);
        let skipped = &frames[0];
        assert_eq!(skipped["type"], "skipped");
        // seq 1 is the gap's, so the dropped frames had 2..; the client sees 1 missing.
        assert_eq!(skipped["from_seq"], 2);
        let count = skipped["count"].as_u64().unwrap();
        assert_eq!(count, swaps, "conflations merge into one frame");
        assert_eq!(skipped["to_seq"].as_u64().unwrap(), 1 + count);
        assert_eq!(skipped["seq"].as_u64().unwrap(), 2 + count);
        assert_eq!(skipped["stats"]["totals"]["swaps"], 0, "the snapshot is the newest stats");
        // Every swap is either delivered or counted.
        let delivered = frames.iter().filter(|f| f["type"] == "swap").count() as u64;
        assert_eq!(delivered + count, 20);
        for (n, frame) in frames.iter().enumerate().skip(1) {
            assert_eq!(frame["seq"].as_u64().unwrap(), 2 + count + n as u64, "contiguous after the skipped frame");
        }
    }

    #[test]
    fn a_resumed_channel_gets_its_replay_then_the_live_frames_after_it_once() {
        let mut queue = OutQueue::new(1 << 20);
        queue.open(key("token:ETH"), "token:ETH".into());
        // Live frames queued while the history was read: 3 and 4 are in the
        // replay, 5 and 6 come after it.
        queue.push(handoff("token:ETH", vec![swap(3), stats(4), swap(4)]));
        queue.push(handoff("token:ETH", vec![swap(5), swap(6)]));
        let floor = swap(4).offset.unwrap();
        let replay = vec![Replayed::Swaps(vec![swap(2)]), Replayed::Gap, Replayed::Swaps(vec![swap(3), swap(4)])];
        queue.start(&key("token:ETH"), "{}".into(), floor, replay);
        let frames = take_all(&mut queue);
        let shown: Vec<(u64, &str, Option<&str>)> = frames
            .iter()
            .map(|f| (f["seq"].as_u64().unwrap(), f["type"].as_str().unwrap(), f["offset"].as_str()))
            .collect();
        let expected = [
            (1, "swap", Some("2-0-1")),
            (3, "swap", Some("3-0-1")),
            (4, "swap", Some("4-0-1")),
            (5, "stats", None),
            (6, "swap", Some("5-0-1")),
            (7, "swap", Some("6-0-1")),
        ];
        assert_eq!(shown, expected, "the gap skips seq 2; the live 3 and 4 are not repeated");
        assert_eq!(queue.bytes(), 0, "the estimates balance");
    }

    #[test]
    fn the_writer_takes_at_most_its_budget_and_closing_drops_everything() {
        let one = handoff("token:ETH", vec![swap(0)]).estimate;
        let mut queue = OutQueue::new(1 << 20);
        queue.open(key("token:ETH"), "token:ETH".into());
        queue.start(&key("token:ETH"), "{}".into(), Offset::ZERO, Vec::new());
        queue.push(handoff("token:ETH", (0..100).map(swap).collect()));
        let mut out = BytesMut::new();
        let taken = queue.take(1000, &mut out);
        assert!(taken.bytes >= 1000 && taken.bytes < 1000 + one as usize, "{taken:?}");
        // Exact but for the seq digits past the first.
        assert!((0..=2).contains(&(taken.bytes as i64 - taken.estimate)), "{taken:?}");
        assert!(queue.bytes() > 0);
        let left = queue.bytes();
        assert_eq!(queue.close(), -left);
        assert_eq!(queue.bytes(), 0);
        assert!(!queue.push(handoff("token:ETH", vec![swap(1)])).queued);
        assert!(take_all(&mut queue).is_empty());
    }
}
