use super::{impl_packet_for, impl_request_id, Packet, RequestId};

/// Implementation for `SSH_FXP_DATA`
// PORTCULLIS PATCH: the payload is `Bytes`, decoded as a slice of the packet (see
// `Packet::try_from`), not copied into a `Vec`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Data {
    pub id: u32,
    #[serde(with = "super::payload")]
    pub data: bytes::Bytes,
}

impl_request_id!(Data);
impl_packet_for!(Data);
