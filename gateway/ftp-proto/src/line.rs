//! Splitting the control stream into lines, with a bound on their length.

/// The longest command line accepted, CRLF included. RFC 959 sets no limit; paths are bounded
/// by the backends anyway, and a bound keeps a slow-loris client from growing a buffer.
pub const MAX_LINE: usize = 4096;

/// Why a line was refused; the session answers and goes on with the next line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Longer than [`MAX_LINE`]; the rest of it, up to the next LF, is discarded.
    TooLong,
    /// A NUL byte, which no command may contain.
    Nul,
}

/// Accumulates bytes and yields complete lines (without CRLF). A bare LF ends a line too,
/// as many clients send it; a lone CR stays part of the line (and so of the argument).
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Discarding the rest of an over-long line.
    skipping: bool,
}

impl LineReader {
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a line. After `AUTH TLS` these are cleartext that a
    /// man in the middle may have injected after the command (the STARTTLS injection); the
    /// session discards them with [`LineReader::discard`].
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn discard(&mut self) {
        self.buf.clear();
        self.skipping = false;
    }

    /// The next complete line, if one is buffered.
    pub fn next_line(&mut self) -> Option<Result<String, LineError>> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    // Keep nothing of an over-long line; report it once.
                    self.buf.clear();
                    if !self.skipping {
                        self.skipping = true;
                        return Some(Err(LineError::TooLong));
                    }
                }
                return None;
            };
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            if std::mem::take(&mut self.skipping) {
                continue; // the tail of an over-long line, already answered
            }
            line.pop(); // LF
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() + 2 > MAX_LINE {
                return Some(Err(LineError::TooLong));
            }
            if line.contains(&0) {
                return Some(Err(LineError::Nul));
            }
            // Names are bytes (RFC 959; RFC 2640 only asks for UTF-8): bytes that are not UTF-8
            // are kept as `portcullis_names` escapes, so `STOR` creates the name the client
            // sent, not one with U+FFFD in it, and `Reply::encode` gives them back.
            return Some(Ok(portcullis_names::escape(&line).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<String, LineError>> {
        let mut r = LineReader::new();
        r.push(input);
        std::iter::from_fn(|| r.next_line()).collect()
    }

    #[test]
    fn a_name_that_is_not_utf8_is_kept_byte_for_byte() {
        let got = lines(b"STOR /a\xfe\r\nSTOR /\xef\xbf\xbd\r\n");
        let Ok(first) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(&*portcullis_names::unescape(first), b"STOR /a\xfe");
        // U+FFFD sent as UTF-8 is another name.
        assert_eq!(got[1], Ok("STOR /\u{fffd}".into()));
    }

    #[test]
    fn crlf_and_bare_lf_end_lines() {
        assert_eq!(
            lines(b"USER a\r\nPASS b\nNOOP"),
            [Ok("USER a".into()), Ok("PASS b".into())]
        );
    }

    #[test]
    fn every_split_of_the_input_gives_the_same_lines() {
        let input = b"USER alice\r\nPASS x\r\nRETR /a b\r\n";
        let whole = lines(input);
        for cut in 0..=input.len() {
            let mut r = LineReader::new();
            let mut got = Vec::new();
            r.push(&input[..cut]);
            got.extend(std::iter::from_fn(|| r.next_line()));
            r.push(&input[cut..]);
            got.extend(std::iter::from_fn(|| r.next_line()));
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn an_over_long_line_is_refused_once_and_the_next_line_survives() {
        let mut input = vec![b'A'; MAX_LINE * 3];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut r = LineReader::new();
        let mut got = Vec::new();
        for chunk in input.chunks(1000) {
            r.push(chunk);
            got.extend(std::iter::from_fn(|| r.next_line()));
            assert!(r.pending() <= MAX_LINE + 1000, "the buffer is bounded");
        }
        assert_eq!(got, [Err(LineError::TooLong), Ok("NOOP".into())]);
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(lines(b"RETR a\0b\r\n"), [Err(LineError::Nul)]);
    }

    #[test]
    fn discard_drops_pipelined_cleartext() {
        let mut r = LineReader::new();
        r.push(b"AUTH TLS\r\nUSER injected\r\n");
        assert_eq!(r.next_line(), Some(Ok("AUTH TLS".into())));
        assert!(r.pending() > 0);
        r.discard();
        assert_eq!(r.next_line(), None);
    }
}
