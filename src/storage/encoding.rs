//! Encodings the stores share.

use anyhow::bail;
use chrono::DateTime;

use crate::domain::swap::EventOrder;
use crate::domain::TxHash;

/// The length of an encoded event order.
pub const ORDER_BYTES: usize = 52;

/// Event order as [`ORDER_BYTES`] bytes, big-endian, so byte order is event
/// order (for times after 1970): nanos, block, log index, hash.
pub fn encode_order(at: &EventOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(ORDER_BYTES);
    out.extend_from_slice(&at.0.timestamp_nanos_opt().unwrap_or(i64::MAX).to_be_bytes());
    out.extend_from_slice(&at.1.to_be_bytes());
    out.extend_from_slice(&at.2.to_be_bytes());
    out.extend_from_slice(&at.3 .0);
    out
}

/// The order [`encode_order`] wrote.
pub fn decode_order(bytes: &[u8]) -> anyhow::Result<EventOrder> {
    if bytes.len() != ORDER_BYTES {
        bail!("bad event order of {} bytes ({ORDER_BYTES} expected)", bytes.len());
    }
    let nanos = i64::from_be_bytes(bytes[0..8].try_into()?);
    let block = u64::from_be_bytes(bytes[8..16].try_into()?);
    let log_index = u32::from_be_bytes(bytes[16..20].try_into()?);
    let hash: [u8; 32] = bytes[20..52].try_into()?;
    Ok((DateTime::from_timestamp_nanos(nanos), block, log_index, TxHash(hash)))
}

/// Lower-case hex of `bytes`, as `hex::encode` writes it, byte to byte
/// rather than through `char`s: the live writer encodes every changed
/// candle's makers sketch this way.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("twice the input's length");
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_hex_is_hex_encode() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        assert_eq!(to_hex(&[]), "");
    }
}
