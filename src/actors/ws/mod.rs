//! WebSocket: the session registry (subscriptions and fan-out), one session
//! actor per connection, and what both depend on: the protocol's frames,
//! the connection's shared state and outbound queue, and admission limits.
//! The registry's own parts: its pub/sub connection (`pubsub`) and the
//! decisions it makes without an actor (`fanout`). The session's: the
//! client's requests (`request`) and the snapshots and history replays that
//! answer a subscription (`snapshots`).
//! Registry and sessions do not import each other's internals: the session
//! sends the registry its requests, the registry reaches a connection
//! through its [`connection::ConnShared`] and closes a session with a
//! [`protocol::Outbound`] message.

pub mod connection;
mod fanout;
pub mod limits;
pub mod outbound;
pub mod protocol;
mod pubsub;
pub mod registry;
mod request;
pub mod session;
pub mod snapshots;
