use bytes::Buf;

use crate::error::Error;

pub trait TryBuf: Buf {
    fn try_get_bytes(&mut self) -> Result<Vec<u8>, Error>;
    fn try_get_string(&mut self) -> Result<String, Error>;
}

impl<T: Buf> TryBuf for T {
    fn try_get_bytes(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.try_get_u32()? as usize;
        if self.remaining() < len {
            return Err(Error::BadMessage("no remaining for vec".to_owned()));
        }

        Ok(self.copy_to_bytes(len).to_vec())
    }

    fn try_get_string(&mut self) -> Result<String, Error> {
        let bytes = self.try_get_bytes()?;
        // PORTCULLIS PATCH: SFTP v3 strings are bytes. A lossy decode replaced bytes that are
        // not UTF-8 with U+FFFD, so a name could be listed but never reached, and two names
        // became one; escaping keeps every byte, and `ser.rs` writes it back.
        Ok(match String::from_utf8(bytes) {
            Ok(s) if !s.as_bytes().contains(&0xEE) => s,
            Ok(s) => portcullis_names::escape(s.as_bytes()).into_owned(),
            Err(e) => portcullis_names::escape(e.as_bytes()).into_owned(),
        })
    }
}
