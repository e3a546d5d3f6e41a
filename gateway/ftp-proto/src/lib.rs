//! The FTP control protocol without I/O: bytes in, commands out; replies in, bytes out. Tests
//! and fuzz targets drive it directly (the FTPS front end wraps it around sockets).
//!
//! Covers RFC 959 (base), 2228 (`AUTH`/`PBSZ`/`PROT`/`CCC`), 2389 (`FEAT`/`OPTS`), 2428
//! (`EPRT`/`EPSV`), 3659 (`SIZE`/`MDTM`/`MLST`/`MLSD`) and 4217 (FTP over TLS).

mod command;
mod control;
mod data;
mod line;
mod listing;
mod reply;

pub use command::{Command, HostPort, ParseError, ProtLevel, parse, split_command};
pub use control::{Action, Control, Identified, Protection, Start};
pub use data::{
    ActivePolicy, ActiveRefusal, PassivePorts, check_active, epsv_reply, passive_peer_ok,
    pasv_reply,
};
pub use line::{LineError, LineReader, MAX_LINE};
pub use listing::{Entry, list_line, mlsd_line, timeval};
pub use reply::Reply;

/// Drives a whole control session from raw bytes: lines through the reader, commands through
/// the parser and the state machine (logins succeed on even attempts, TLS comes up when
/// asked), every reply through the writer. The fuzz target calls this; so does a unit test.
pub fn fuzz_control(data: &[u8]) {
    let start = if data.first().is_some_and(|b| b & 1 == 1) {
        Start::Implicit
    } else {
        Start::Explicit
    };
    let mut control = Control::new(start);
    let mut reader = LineReader::new();
    let mut logins = 0u32;
    for chunk in data.chunks(7) {
        reader.push(chunk);
        while let Some(line) = reader.next_line() {
            let actions = match line {
                Ok(l) => match parse(&l) {
                    Ok(cmd) => control.on_command(cmd),
                    Err(e) => control.on_parse_error(&e),
                },
                Err(e) => control.on_line_error(e),
            };
            for a in actions {
                match a {
                    Action::Reply(r) | Action::Close(r) => {
                        let bytes = r.encode();
                        assert!(bytes.ends_with(b"\r\n"));
                        assert_eq!(
                            bytes.iter().filter(|&&b| b == b'\n').count(),
                            r.lines.len().max(1)
                        );
                    }
                    Action::StartTls(r) => {
                        let _ = r.encode();
                        reader.discard();
                        control.tls_established();
                    }
                    Action::Identify { .. } => {
                        assert!(control.secured(), "USER is never taken in cleartext");
                        let outcome = if logins % 3 == 2 {
                            Identified::Complete
                        } else {
                            Identified::NeedPassword
                        };
                        let _ = control.identified(outcome);
                    }
                    Action::Authenticate { .. } => {
                        logins += 1;
                        assert!(
                            control.secured(),
                            "credentials are never taken in cleartext"
                        );
                        let _ = control.login_result(logins.is_multiple_of(2));
                    }
                    Action::Forward(cmd) => {
                        assert!(control.user().is_some() && control.secured());
                        // The session accepts every other RNFR, so that RNTO's rules run too.
                        if let Command::Rnfr(p) = cmd
                            && logins.is_multiple_of(2)
                        {
                            assert_eq!(control.rename_from(p).code, 350);
                        }
                    }
                    Action::Transfer { .. } | Action::Rename { .. } => {
                        assert!(control.user().is_some() && control.secured());
                    }
                    Action::Refused { .. } => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod fuzz_smoke {
    #[test]
    fn the_seed_corpus_runs_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            super::fuzz_control(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seed inputs in {}", dir.display());
    }
}
