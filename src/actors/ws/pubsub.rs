//! The registry's Redis pub/sub connection: it subscribes to the update
//! channels the registry asks for, queues every message in the registry's
//! inbox, and reconnects (re-subscribing) when the connection drops,
//! telling the registry so, since what was published meanwhile is lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use foldhash::{HashSet, HashSetExt};
use futures::StreamExt;
use slog::{warn, Logger};
use tokio::sync::{mpsc, oneshot};

/// Messages from Redis pub/sub (`{"key": "token:ETH", "swaps": [...]}`)
/// wait here, in the order they came, until the registry takes them all at
/// once: under load each session then gets one handoff per channel for many
/// updates instead of one per update, and at low load nothing waits.
#[derive(Clone, Default)]
pub(super) struct Inbox(Arc<Mutex<Vec<Incoming>>>);

pub(super) enum Incoming {
    /// An update message, and when it arrived.
    Update(Vec<u8>, Instant),
    /// The pub/sub connection is back after a loss.
    Resumed,
}

/// Something arrived in the inbox (sent when it was empty).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Published;

impl Inbox {
    /// Everything waiting, oldest first.
    pub(super) fn take(&self) -> Vec<Incoming> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues `incoming` and wakes the registry if the inbox was empty.
    fn deliver(&self, registry: &Recipient<Published>, incoming: Incoming) {
        let mut waiting = self.0.lock().unwrap_or_else(|e| e.into_inner());
        waiting.push(incoming);
        if waiting.len() == 1 {
            registry.do_send(Published);
        }
    }
}

/// What the registry asks of the connection.
pub(super) enum PubSubCommand {
    /// Subscribe, and say so on the sender once Redis confirmed it.
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// Holds the pub/sub connection: subscribes to what the registry asks for,
/// forwards every message, and reconnects (re-subscribing) when it drops.
pub(super) async fn pubsub_loop(
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<PubSubCommand>,
    registry: Recipient<Published>,
    inbox: Inbox,
    log: Logger,
) {
    let mut wanted: HashSet<String> = HashSet::new();
    // Subscriptions asked for and not confirmed yet (the connection dropped).
    let mut unconfirmed: Vec<oneshot::Sender<()>> = Vec::new();
    let mut reconnecting = false;
    loop {
        let connection = match client.get_async_pubsub().await {
            Ok(connection) => connection,
            Err(e) => {
                warn!(log, "cannot open the Redis pub/sub connection; retrying"; "error" => %e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut sink, mut stream) = connection.split();
        let all: Vec<&String> = wanted.iter().collect();
        if !all.is_empty() && sink.subscribe(all).await.is_err() {
            continue;
        }
        for confirm in unconfirmed.drain(..) {
            let _ = confirm.send(());
        }
        if reconnecting {
            // What was published while disconnected is lost: say so.
            inbox.deliver(&registry, Incoming::Resumed);
        }
        reconnecting = true;
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let result = match command {
                        None => return,
                        Some(PubSubCommand::Subscribe(channel, confirm)) => {
                            let result = if wanted.insert(channel.clone()) { sink.subscribe(channel).await } else { Ok(()) };
                            match result {
                                Ok(()) => { let _ = confirm.send(()); }
                                Err(_) => unconfirmed.push(confirm),
                            }
                            result
                        }
                        Some(PubSubCommand::Unsubscribe(channel)) => {
                            if wanted.remove(&channel) { sink.unsubscribe(channel).await } else { Ok(()) }
                        }
                    };
                    if let Err(e) = result {
                        warn!(log, "Redis pub/sub command failed; reconnecting"; "error" => %e);
                        break;
                    }
                }
                message = stream.next() => match message {
                    Some(message) => inbox.deliver(&registry, Incoming::Update(message.get_payload_bytes().to_vec(), Instant::now())),
                    None => {
                        warn!(log, "Redis pub/sub connection lost; reconnecting");
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
