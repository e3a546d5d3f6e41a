//! The control connection's bytes: lines in, replies out, and what of them the audit keeps.

use std::collections::VecDeque;

use portcullis_ftp_proto::{LineError, LineReader, Reply, split_command};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The control connection's stream with a line reader and pushed-back lines.
pub(super) struct Wire<S> {
    pub(super) io: S,
    pub(super) reader: LineReader,
    pub(super) backlog: VecDeque<Result<String, LineError>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(super) fn new(io: S) -> Wire<S> {
        Wire {
            io,
            reader: LineReader::new(),
            backlog: VecDeque::new(),
        }
    }

    /// The next line; `None` when the peer closed. Cancel-safe: the only await is one read,
    /// whose bytes are buffered before anything else happens.
    pub(super) async fn next_line(&mut self) -> std::io::Result<Option<Result<String, LineError>>> {
        if let Some(l) = self.backlog.pop_front() {
            return Ok(Some(l));
        }
        self.fresh_line().await
    }

    /// The next line from the connection, leaving the backlog alone (what a running transfer
    /// reads: lines it does not act on go to the backlog, and must not come straight back).
    pub(super) async fn fresh_line(
        &mut self,
    ) -> std::io::Result<Option<Result<String, LineError>>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(l) = self.reader.next_line() {
                return Ok(Some(l));
            }
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.reader.push(&buf[..n]);
        }
    }

    pub(super) async fn send(&mut self, r: &Reply) -> std::io::Result<()> {
        self.io.write_all(&r.encode()).await?;
        self.io.flush().await
    }
}

/// Telnet IP/DM bytes some clients put before `ABOR` show up as replacement characters.
pub(super) fn clean(line: &str) -> &str {
    line.trim_start_matches(|c: char| !c.is_ascii_alphabetic())
}

/// `verb` and argument as the audit records them: never what follows `PASS` or `ACCT`,
/// however it is separated (`PASS<TAB>x`, or `PASSx` with none at all).
pub(super) fn audit_parts(line: &str) -> (String, Option<String>) {
    let (verb, arg) = split_command(line);
    let upper = verb.to_ascii_uppercase();
    for secret in ["PASS", "ACCT"] {
        if upper.starts_with(secret) {
            let hidden = (arg.is_some() || upper.len() > secret.len()).then(|| "********".into());
            return (secret.to_owned(), hidden);
        }
    }
    let verb: String = upper.chars().take(16).collect();
    (verb, arg.map(|a| a.chars().take(512).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn audit_never_records_a_password() {
        assert_eq!(
            audit_parts("pass hunter2"),
            ("PASS".to_owned(), Some("********".to_owned()))
        );
        assert_eq!(
            audit_parts("RETR /in/a b.txt"),
            ("RETR".to_owned(), Some("/in/a b.txt".to_owned()))
        );
        assert_eq!(audit_parts("PWD"), ("PWD".to_owned(), None));
        let hidden = ("PASS".to_owned(), Some("********".to_owned()));
        assert_eq!(audit_parts("PASS\tSecret"), hidden);
        assert_eq!(audit_parts("PASS\u{3000}Secret"), hidden);
        assert_eq!(audit_parts("passSecret"), hidden);
        assert_eq!(audit_parts("PASS"), ("PASS".to_owned(), None));
        assert_eq!(
            audit_parts("ACCT\tk"),
            ("ACCT".to_owned(), Some("********".to_owned()))
        );
        // Telnet IP/DM before ABOR (as replacement characters).
        assert_eq!(clean("\u{fffd}\u{fffd}ABOR"), "ABOR");
    }
}
