//! The protobuf encoding (`proto/swapstream/v1/swap.proto`).

use prost::Message;

use super::DecodeError;
use crate::domain::{FieldError, RawSwap, RawTime, Status, SwapEvent};

mod pb {
    include!(concat!(env!("OUT_DIR"), "/swapstream.v1.rs"));
}

pub(super) fn decode(payload: &[u8]) -> Result<RawSwap, DecodeError> {
    let message = pb::SwapEvent::decode(payload).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let status = match pb::SwapStatus::try_from(message.status) {
        Ok(pb::SwapStatus::Unspecified) => None,
        Ok(pb::SwapStatus::Pending) => Some("pending"),
        Ok(pb::SwapStatus::Confirmed) => Some("confirmed"),
        Ok(pb::SwapStatus::Failed) => Some("failed"),
        Err(_) => {
            return Err(FieldError::new("status", format!("unknown status number {}", message.status)).into());
        }
    };
    let present = |text: String| (!text.is_empty()).then_some(text);
    Ok(RawSwap {
        tx_hash: present(message.tx_hash),
        log_index: Some(u64::from(message.log_index)),
        block_number: message.block_number,
        timestamp: message.timestamp.map(|t| RawTime::Unix { seconds: t.seconds, nanos: t.nanos }),
        status: status.map(str::to_owned),
        maker: message.maker,
        token_from: present(message.token_from),
        token_to: present(message.token_to),
        amount_from: present(message.amount_from),
        amount_to: present(message.amount_to),
        usd_value: present(message.usd_value),
    })
}

pub(super) fn encode(event: &SwapEvent) -> Vec<u8> {
    let status = match event.status {
        Status::Pending => pb::SwapStatus::Pending,
        Status::Confirmed => pb::SwapStatus::Confirmed,
        Status::Failed => pb::SwapStatus::Failed,
    };
    pb::SwapEvent {
        tx_hash: event.id.tx_hash.to_string(),
        log_index: event.id.log_index,
        block_number: event.block_number,
        timestamp: Some(prost_types::Timestamp {
            seconds: event.timestamp.timestamp(),
            nanos: event.timestamp.timestamp_subsec_nanos() as i32,
        }),
        status: status as i32,
        maker: event.maker.map(|m| m.to_string()),
        token_from: event.token_from.to_string(),
        token_to: event.token_to.to_string(),
        amount_from: event.amount_from.to_string(),
        amount_to: event.amount_to.to_string(),
        usd_value: event.usd_value.to_string(),
    }
    .encode_to_vec()
}
