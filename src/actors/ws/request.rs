//! What a client sends on a WebSocket connection: its requests, read and
//! checked field by field, and how an answer echoes the request's `id`.

use std::collections::HashMap;

use serde_json::Value;

use super::protocol::{parse_channel, ChannelKey};
use crate::storage::redis::Offset;

/// Where a resuming client was in a channel: the history's epoch and its
/// offset there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Since {
    pub epoch: String,
    pub offset: Offset,
}

/// The longest string a client's request `id` may be.
pub const MAX_ID_CHARS: usize = 64;

/// A client request: `{"op": ..., "id": ..., "channels": [...]}`.
pub struct Request {
    pub op: String,
    /// Echoed on every answer to the request: a string of at most
    /// [`MAX_ID_CHARS`] or an integer.
    pub id: Option<Value>,
    pub channels: Option<Vec<Value>>,
    /// Refuse tokens and pairs without a swap seen (REST answers 404)
    /// instead of subscribing with an all-zero snapshot.
    pub known_only: bool,
    /// Per channel, where the client was: `{"token:ETH": {"epoch": ..,
    /// "offset": ..}}`.
    pub since: HashMap<ChannelKey, Since>,
}

impl Request {
    /// The request in `text`; the error (code, message) carries the `id`
    /// when that much could be read.
    pub fn parse(text: &str) -> Result<Request, (Option<Value>, &'static str, String)> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| (None, "bad_json", format!("expected a JSON request object: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err((None, "bad_json", "expected a JSON request object".into()));
        };
        let id = match fields.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.chars().count() <= MAX_ID_CHARS => Some(Value::String(id)),
            Some(Value::Number(id)) if id.is_i64() || id.is_u64() => Some(Value::Number(id)),
            Some(_) => {
                let message = format!("`id`: expected a string of at most {MAX_ID_CHARS} characters or an integer");
                return Err((None, "bad_request", message));
            }
        };
        let op = match fields.remove("op") {
            Some(Value::String(op)) => op,
            _ => return Err((id, "bad_request", "`op`: expected a string".into())),
        };
        let channels = match fields.remove("channels") {
            None | Some(Value::Null) => None,
            Some(Value::Array(channels)) => Some(channels),
            Some(_) => return Err((id, "bad_request", "`channels`: expected a list".into())),
        };
        let known_only = match fields.remove("known_only") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(known_only)) => known_only,
            Some(_) => return Err((id, "bad_request", "`known_only`: expected true or false".into())),
        };
        let since = match fields.remove("since") {
            None | Some(Value::Null) => HashMap::new(),
            Some(since) => Self::since(since).map_err(|message| (id.clone(), "bad_since", message))?,
        };
        Ok(Request { op, id, channels, known_only, since })
    }

    fn since(value: Value) -> Result<HashMap<ChannelKey, Since>, String> {
        const SHAPE: &str = r#"expected {"<channel>": {"epoch": "<epoch>", "offset": "<offset>"}, ...}"#;
        let Value::Object(channels) = value else { return Err(format!("`since`: {SHAPE}")) };
        let mut since = HashMap::with_capacity(channels.len());
        for (name, position) in channels {
            let shown: String = name.chars().take(64).collect();
            let key = match parse_channel(&name) {
                Some(key @ ChannelKey::Live(_)) => key,
                Some(ChannelKey::Candles(..)) => {
                    return Err(format!("`since`: {shown} has no history: its frames are state, subscribe again"))
                }
                None => return Err(format!("`since`: {shown:?} is not a channel")),
            };
            let field = |field: &str| position.get(field).and_then(Value::as_str).map(str::to_owned);
            let (Some(epoch), Some(offset)) = (field("epoch"), field("offset")) else {
                return Err(format!("`since.{shown}`: {SHAPE}"));
            };
            let offset = offset
                .parse()
                .map_err(|()| format!("`since.{shown}.offset`: expected an offset from a frame of this channel"))?;
            since.insert(key, Since { epoch, offset });
        }
        Ok(since)
    }
}

/// `frame` with the request's `id` when it had one.
pub fn answer(mut frame: Value, id: Option<&Value>) -> String {
    if let (Some(id), Value::Object(fields)) = (id, &mut frame) {
        fields.insert("id".into(), id.clone());
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_request_is_read_with_its_id_and_a_bad_one_says_which_field() {
        let request = Request::parse(r#"{"op":"subscribe","id":"r-1","channels":["token:ETH"],"known_only":true}"#)
            .unwrap_or_else(|(_, code, message)| panic!("{code}: {message}"));
        assert_eq!(
            (request.op.as_str(), request.id, request.channels.map(|c| c.len()), request.known_only),
            ("subscribe", Some(json!("r-1")), Some(1), true)
        );
        assert_eq!(Request::parse(r#"{"op":"ping","id":42}"#).map(|r| r.id).ok(), Some(Some(json!(42))));

        let refused = |text: &str| Request::parse(text).err();
        let (id, code, message) = refused(r#"{"op":"ping","id":1.5}"#).expect("refused");
        assert_eq!((id, code), (None, "bad_request"));
        assert!(message.starts_with("`id`"), "{message}");
        let long = format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(MAX_ID_CHARS + 1));
        assert_eq!(refused(&long).map(|(_, code, _)| code), Some("bad_request"));
        let (id, code, message) = refused(r#"{"id":7,"channels":[]}"#).expect("refused");
        assert_eq!((id, code), (Some(json!(7)), "bad_request"), "the id is echoed once it was read");
        assert!(message.starts_with("`op`"), "{message}");
        assert_eq!(refused(r#"[1,2]"#).map(|(_, code, _)| code), Some("bad_json"));
        assert_eq!(
            refused(r#"{"op":"subscribe","channels":"token:ETH"}"#).map(|(_, code, _)| code),
            Some("bad_request")
        );
        assert_eq!(
            refused(r#"{"op":"subscribe","channels":[],"known_only":1}"#).map(|(_, code, _)| code),
            Some("bad_request")
        );
    }

    #[test]
    fn an_answer_carries_the_id_only_when_the_request_had_one() {
        let read = |text: String| serde_json::from_str::<Value>(&text).expect("JSON");
        assert_eq!(read(answer(json!({"type": "pong"}), None)), json!({"type": "pong"}));
        assert_eq!(read(answer(json!({"type": "pong"}), Some(&json!("a")))), json!({"type": "pong", "id": "a"}));
    }
}
