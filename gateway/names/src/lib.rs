//! File names are bytes (SFTP v3 strings, FTP command lines, POSIX names); the gateway's policy,
//! audit and backend APIs work on `String`s. This crate maps one to the other without loss.
//!
//! Valid UTF-8 maps to itself. Each byte that is not part of valid UTF-8 (always `0x80..=0xFF`)
//! maps to the private-use code point `U+EF00 + byte`, that is `U+EF80..=U+EFFF`, as MirBSD's
//! OPTU-8 does. So that the map stays one-to-one, a name that really contains one of those
//! 128 code points has each byte of its UTF-8 form escaped the same way. [`unescape`] undoes
//! [`escape`] exactly, for every byte string; a name that the gateway refused to rewrite is a
//! name it could not store under another name. Replacing bad bytes with U+FFFD, as a lossy
//! decode does, makes two names one and a listed name unreachable.

use std::borrow::Cow;

/// The first code point of the escape block; byte `b` is carried as `ESCAPE_BASE + b`.
const ESCAPE_BASE: u32 = 0xEF00;
/// The lead byte of every code point in `U+EF80..=U+EFFF` when encoded as UTF-8.
const ESCAPED_LEAD: u8 = 0xEE;

fn is_escape(c: char) -> bool {
    (0xEF80..=0xEFFF).contains(&u32::from(c))
}

fn push_byte(out: &mut String, b: u8) {
    // `b >= 0x80` for every byte escaped here, so the code point is in the escape block.
    out.push(char::from_u32(ESCAPE_BASE + u32::from(b)).expect("a private-use code point"));
}

/// The gateway's name for the byte name `raw`. Borrows when `raw` is UTF-8 that needs no escape.
pub fn escape(raw: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(raw)
        && !raw.contains(&ESCAPED_LEAD)
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_escape(c) {
                let mut buf = [0; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .for_each(|b| push_byte(&mut out, b));
            } else {
                out.push(c);
            }
        }
        chunk.invalid().iter().for_each(|&b| push_byte(&mut out, b));
    }
    Cow::Owned(out)
}

/// The bytes that `name` stands for. Borrows when `name` carries no escaped byte.
pub fn unescape(name: &str) -> Cow<'_, [u8]> {
    if !name.chars().any(is_escape) {
        return Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    for c in name.chars() {
        if is_escape(c) {
            // In the block, so the difference is 0x80..=0xFF.
            out.push((u32::from(c) - ESCAPE_BASE) as u8);
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// `name` as UTF-8 for a peer whose protocol library only carries `str` (an FTP backend), or
/// `None` when the bytes it stands for are not UTF-8.
pub fn to_utf8(name: &str) -> Option<Cow<'_, str>> {
    match unescape(name) {
        Cow::Borrowed(_) => Some(Cow::Borrowed(name)),
        Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(raw: &[u8]) {
        let name = escape(raw);
        assert_eq!(&*unescape(&name), raw, "{raw:x?} via {name:?}");
    }

    #[test]
    fn utf8_names_map_to_themselves() {
        for s in [
            "",
            "a.txt",
            "café/ü",
            "日本語",
            "\u{FFFD}",
            "x\u{EF7F}y\u{F000}",
        ] {
            assert_eq!(escape(s.as_bytes()), s);
            assert!(matches!(unescape(s), Cow::Borrowed(b) if b == s.as_bytes()));
        }
    }

    #[test]
    fn bad_bytes_become_escapes_and_come_back() {
        assert_eq!(escape(b"caf\xe9.txt"), "caf\u{EFE9}.txt");
        assert_eq!(&*unescape("caf\u{EFE9}.txt"), b"caf\xe9.txt");
        // Lossy decoding would make these one name (`a\u{FFFD}`).
        assert_ne!(escape(b"a\xfe"), escape(b"a\xff"));
        assert_ne!(escape(b"a\xfe"), escape("a\u{FFFD}".as_bytes()));
    }

    #[test]
    fn a_real_escape_code_point_is_escaped_so_names_stay_distinct() {
        let real = "x\u{EFE9}".as_bytes();
        assert_eq!(escape(real), "x\u{EFEE}\u{EFBF}\u{EFA9}");
        assert_ne!(escape(real), escape(b"x\xe9"));
        round_trip(real);
    }

    #[test]
    fn every_one_and_two_byte_name_and_every_prefix_of_utf8_round_trips() {
        for a in 0..=255u8 {
            round_trip(&[a]);
            for b in 0..=255u8 {
                round_trip(&[a, b]);
            }
        }
        for s in ["é", "€", "𝄞", "\u{EF80}", "\u{EFFF}"] {
            let b = s.as_bytes();
            for i in 0..=b.len() {
                round_trip(&b[..i]);
                round_trip(&[&b[..i], b"\xff", &b[i..]].concat());
            }
        }
    }

    #[test]
    fn only_names_with_escapes_lose_utf8() {
        assert_eq!(to_utf8("plain").as_deref(), Some("plain"));
        assert_eq!(
            to_utf8(&escape("x\u{EFE9}".as_bytes())).as_deref(),
            Some("x\u{EFE9}")
        );
        assert_eq!(to_utf8(&escape(b"caf\xe9")), None);
    }

    #[test]
    fn distinct_byte_names_stay_distinct() {
        // A small deterministic generator over bytes that exercise every branch.
        let alphabet = [b'a', 0x80, 0xbf, 0xc3, 0xa9, 0xee, 0xbe, 0xef, 0xff, b'/'];
        let mut seen = std::collections::HashMap::new();
        for n in 0..alphabet.len().pow(4) {
            let mut k = n;
            let raw: Vec<u8> = (0..4)
                .map(|_| {
                    let b = alphabet[k % alphabet.len()];
                    k /= alphabet.len();
                    b
                })
                .collect();
            let name = escape(&raw).into_owned();
            assert_eq!(*unescape(&name), raw[..]);
            if let Some(other) = seen.insert(name, raw.clone()) {
                panic!("{raw:x?} and {other:x?} share a name");
            }
        }
    }
}
