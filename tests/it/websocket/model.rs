//! What a client must receive, from the producer's ground truth, and
//! what it did receive, checked frame by frame as it arrives.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use swapstream::producer::ground_truth::GroundTruthFile;

use super::client::{Client, Drained, Got};
use super::QUIET;

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
    pub(crate) next_seq: u64,
    pub(crate) states: BTreeSet<(String, u64, String)>,
    pub(crate) last_stats: Option<Value>,
    pub(crate) stats_frames: u32,
    pub(crate) since: Instant,
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
    pub(crate) fn assert_stats_coalesced(&self, interval: Duration) {
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
    pub(crate) async fn until_final(
        &mut self,
        client: &mut Client,
        truth: &GroundTruthFile,
        channel: &str,
        token: &str,
    ) {
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
