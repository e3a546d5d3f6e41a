use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::Error;

pub(crate) fn unix(time: SystemTime) -> u32 {
    DateTime::<Utc>::from(time).timestamp() as u32
}

pub(crate) async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_length: u32,
) -> Result<Bytes, Error> {
    let length = stream.read_u32().await?;
    if length > max_length {
        return Err(Error::BadMessage("packet length limit exceeded".to_owned()));
    }

    // PORTCULLIS PATCH: read into uninitialised capacity instead of a zeroed `Vec`: the
    // memset was 3 % of the gateway's CPU on a download (docs/performance.md).
    let mut buf = BytesMut::with_capacity(length as usize);
    while buf.len() < length as usize {
        let left = (length as usize - buf.len()) as u64;
        if (&mut *stream).take(left).read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }

    Ok(buf.freeze())
}
