//! FTP replies: a three-digit code and one or more lines of text, written the RFC 959 way.

/// A reply. Text never contains CR or LF: they are replaced, so a file name echoed into a
/// reply cannot forge a second reply line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    pub fn multi(code: u16, lines: Vec<String>) -> Reply {
        Reply { code, lines }
    }

    /// The bytes on the wire: `CODE text` for one line; `CODE-first`, the middle lines
    /// (indented by one space so none can look like an end line), `CODE last` for several.
    /// A name echoed in the text goes out as the bytes it stands for (`portcullis_names`).
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!((100..=599).contains(&self.code));
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        let mut out = String::new();
        match self.lines.as_slice() {
            [] => out.push_str(&format!("{} \r\n", self.code)),
            [one] => out.push_str(&format!("{} {}\r\n", self.code, clean(one))),
            [first, middle @ .., last] => {
                out.push_str(&format!("{}-{}\r\n", self.code, clean(first)));
                for m in middle {
                    out.push_str(&format!(" {}\r\n", clean(m)));
                }
                out.push_str(&format!("{} {}\r\n", self.code, clean(last)));
            }
        }
        portcullis_names::unescape(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_replies() {
        assert_eq!(Reply::new(230, "Logged in").encode(), b"230 Logged in\r\n");
        let feat = Reply::multi(
            211,
            vec![
                "Features:".into(),
                "PBSZ".into(),
                "PROT".into(),
                "End".into(),
            ],
        );
        assert_eq!(
            feat.encode(),
            b"211-Features:\r\n PBSZ\r\n PROT\r\n211 End\r\n"
        );
    }

    #[test]
    fn crlf_in_text_cannot_forge_a_reply() {
        let r = Reply::new(550, "no such file: a\r\n230 Logged in");
        assert_eq!(r.encode(), b"550 no such file: a  230 Logged in\r\n");
    }

    #[test]
    fn an_echoed_name_goes_out_as_its_bytes() {
        let name = portcullis_names::escape(b"/caf\xe9").into_owned();
        let r = Reply::new(257, format!("\"{name}\" created"));
        assert_eq!(r.encode(), b"257 \"/caf\xe9\" created\r\n");
    }
}
