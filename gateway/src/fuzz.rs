//! Entry points for the fuzz targets in `gateway/fuzz` (cargo-fuzz, nightly): the parsers that
//! read what a stranger sends. Each drives the gateway's own code, not a copy, and checks the
//! properties the rest of the gateway relies on; a broken property panics, which is what the
//! fuzzer reports. Unit tests run the seed corpus (`gateway/fuzz/seeds`) through each on
//! stable, so `cargo test` exercises them too.
//!
//! - [`sftp_packets`]: a client's SFTP byte stream, framed as the channel reader frames it,
//!   through the packet decoder and the reply encoder, and every path through `VPath`.
//! - [`ftp_listing`]: a backend's `MLSD` or `LIST` reply through the listing parser, and each
//!   entry back out as the `LIST` line the FTPS front end would send.
//! - [`config`]: a config file through the loader (parse, validate), then each user's policy
//!   tree against hostile paths.

use bytes::{Buf, Bytes};
use portcullis_config::{GatewayConfig, Verb, validate};

use crate::{
    backends::ftps::listing,
    frontends::sftp::{Decoded, Kind, MAX_PACKET, decode, encode},
    fs::{FileAttrs, FileOp, FsError, OpOutput},
    policy::{Tree, VPath},
};

/// Splits `data` into length-prefixed SFTP packets the way the channel reader does (a zero or
/// oversized length ends the stream), and decodes each.
pub fn sftp_packets(data: &[u8]) {
    let mut rest = Bytes::copy_from_slice(data);
    while rest.remaining() >= 4 {
        let len = rest.get_u32();
        if len == 0 || len > MAX_PACKET || rest.remaining() < len as usize {
            return;
        }
        let packet = rest.split_to(len as usize);
        match decode(packet) {
            Decoded::Op(id, kind, op) => {
                check_op(&op);
                // Every request gets exactly one reply carrying its id, whatever the outcome.
                for result in [Err(FsError::NotFound), Ok(OpOutput::Done)] {
                    check_reply(&encode(id, kind, result), Some(id));
                }
                if matches!(kind, Kind::Data) {
                    let data = Bytes::from(vec![0u8; 1024]);
                    check_reply(&encode(id, kind, Ok(OpOutput::Data(data))), Some(id));
                }
            }
            Decoded::Reply(p) | Decoded::Refused(p, _, _) => {
                let bytes = Bytes::try_from(p).expect("a reply the gateway made encodes");
                check_reply(&bytes, None);
            }
            Decoded::Malformed(reason) => assert!(!reason.is_empty()),
        }
    }
}

fn check_op(op: &FileOp) {
    match op {
        FileOp::Read { len, .. } => assert!(*len <= MAX_PACKET - 1024, "read of {len} bytes"),
        FileOp::Write { data, .. } => assert!(data.len() <= MAX_PACKET as usize),
        _ => {}
    }
    for path in op_paths(op) {
        check_vpath(path);
    }
}

fn op_paths(op: &FileOp) -> Vec<&str> {
    match op {
        FileOp::Open { path, .. }
        | FileOp::OpenDir { path }
        | FileOp::Stat { path, .. }
        | FileOp::SetStat { path, .. }
        | FileOp::Remove { path }
        | FileOp::Mkdir { path, .. }
        | FileOp::Rmdir { path }
        | FileOp::RealPath { path }
        | FileOp::StatVfs { path } => vec![path],
        FileOp::Rename { from, to, .. } => vec![from, to],
        _ => Vec::new(),
    }
}

/// A normalized path has no empty, `.` or `..` segment, starts at the root and has no NUL:
/// whatever the client sent, it cannot name anything above a mount.
fn check_vpath(raw: &str) {
    let Ok(v) = VPath::parse(raw) else { return };
    let s = v.as_str();
    assert!(s.starts_with('/'), "{s:?}");
    assert!(!s.contains('\0'));
    if s != "/" {
        for seg in s[1..].split('/') {
            assert!(!matches!(seg, "" | "." | ".."), "{raw:?} became {s:?}");
        }
    }
    // Normalizing twice changes nothing.
    assert_eq!(VPath::parse(s).as_ref(), Ok(&v));
}

/// An encoded reply is one whole packet: its length prefix covers exactly the rest, and it
/// answers `id` when given.
fn check_reply(bytes: &[u8], id: Option<u32>) {
    assert!(bytes.len() >= 9, "reply of {} bytes", bytes.len());
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 4);
    if let Some(id) = id {
        assert_eq!(u32::from_be_bytes(bytes[5..9].try_into().unwrap()), id);
    }
}

/// The first byte picks `MLSD` (odd) or `LIST` (even); the rest is the reply's lines.
pub fn ftp_listing(data: &[u8]) {
    let Some((&first, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let now = chrono::DateTime::from_timestamp(1_796_212_800, 0).expect("a valid time");
    for e in listing(first & 1 == 1, &lines, now) {
        assert!(crate::fs::listable(&e.name), "{:?}", e.name);
        assert!(
            lines.iter().any(|l| l.contains(e.name.as_str())),
            "{:?} is not in the listing",
            e.name
        );
        relist(&e.name, &e.attrs, now);
    }
}

/// What the FTPS front end lists for an entry parses back to the same name, type, size and
/// permissions (its date to the day, as `LIST` shows a year).
fn relist(name: &str, attrs: &FileAttrs, now: chrono::DateTime<chrono::Utc>) {
    let entry = crate::frontends::ftps::entry(name, attrs);
    let Some(line) = portcullis_ftp_proto::list_line(&entry) else {
        assert!(name.contains(['\r', '\n']), "{name:?} was not listable");
        return;
    };
    let back = listing(false, std::slice::from_ref(&line), now);
    let [b] = back.as_slice() else {
        panic!("{line:?} parsed to {} entries", back.len());
    };
    assert_eq!(b.name, name, "{line:?}");
    assert_eq!(b.attrs.is_dir(), attrs.is_dir(), "{line:?}");
    assert_eq!(b.attrs.size, Some(attrs.size.unwrap_or(0)), "{line:?}");
    assert_eq!(
        b.attrs.mode.map(|m| m & 0o777),
        Some(entry.perms.unwrap_or(if entry.dir { 0o755 } else { 0o644 })),
        "{line:?}"
    );
    let day = |t: Option<u32>| t.map(|t| t / 86_400);
    assert_eq!(day(b.attrs.mtime), day(Some(attrs.mtime.unwrap_or(0))));
}

/// Paths a hostile client tries against every mount.
const HOSTILE: &[&str] = &[
    "..",
    "../..",
    "/../../etc/passwd",
    "%2e%2e/%2e%2e",
    "..\\..\\windows",
    "./././..",
    "//..//..//",
    "\u{2025}/\u{ff0e}\u{ff0e}/x",
    "a/\u{0}b",
];

/// Parses and validates a config as the gateway loads one. A valid config survives a write
/// and a read unchanged, and no user's tree maps a hostile path outside the mount it lands in.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = GatewayConfig::parse(text) else {
        return;
    };
    if validate(&config).is_err() {
        return;
    }
    let written = serde_yaml_ng::to_string(&config).expect("a config serializes");
    let read = GatewayConfig::parse(&written).expect("a written config parses");
    assert_eq!(read, config, "{written}");
    let long = "../".repeat(2000);
    for user in &config.users {
        let tree = Tree::build(&user.roles, &config.roles);
        for role in config.roles.iter().filter(|r| user.roles.contains(&r.name)) {
            for m in &role.mounts {
                for tail in HOSTILE.iter().copied().chain([long.as_str()]) {
                    let raw = format!("{}/{tail}", m.path);
                    let Ok(path) = VPath::parse(&raw) else {
                        continue;
                    };
                    for verb in Verb::ALL {
                        if let Ok(a) = tree.authorize(verb, &path) {
                            let base = a.mount.backend_path.trim_end_matches('/');
                            let rel = a.backend_path.strip_prefix(base).unwrap_or_else(|| {
                                panic!("{raw:?} mapped to {} outside {base}", a.backend_path)
                            });
                            assert!(
                                rel.is_empty() || rel.starts_with('/') || base.is_empty(),
                                "{raw:?} mapped to {}",
                                a.backend_path
                            );
                            assert!(!rel.split('/').any(|s| s == ".."), "{}", a.backend_path);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every seed input of each target runs through its entry point.
    #[test]
    fn seeds_run_through_every_target() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        for (target, run) in [
            ("sftp_packets", super::sftp_packets as fn(&[u8])),
            ("ftp_listing", super::ftp_listing),
            ("config", super::config),
        ] {
            let mut n = 0;
            for entry in std::fs::read_dir(seeds.join(target)).unwrap() {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
                n += 1;
            }
            assert!(n > 0, "no seeds for {target}");
        }
        // The config seeds are valid configs, so the fuzzer starts past the validator.
        for entry in std::fs::read_dir(seeds.join("config")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let config = portcullis_config::GatewayConfig::parse(&text).unwrap();
            if let Err(e) = portcullis_config::validate(&config) {
                panic!("{}: {e:?}", path.display());
            }
        }
    }
}
