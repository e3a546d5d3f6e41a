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

pub use command::{Command, HostPort, ParseError, ProtLevel, parse};
pub use control::{Action, Control, Protection, Start};
pub use data::{
    ActiveRefusal, PassivePorts, check_active, epsv_reply, passive_peer_ok, pasv_reply,
};
pub use line::{LineError, LineReader, MAX_LINE};
pub use listing::{Entry, list_line, mlsd_line, timeval};
pub use reply::Reply;
