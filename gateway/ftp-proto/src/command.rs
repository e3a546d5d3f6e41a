//! Parsing one command line into a typed [`Command`]. Everything a command carries is checked
//! here; what a command *may do* in the current state is the session's business.

use std::net::{IpAddr, Ipv4Addr};

/// An active-mode target from `PORT` or `EPRT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: IpAddr,
    pub port: u16,
}

/// `PROT` levels (RFC 2228/4217). Only `Private` is acceptable to the gateway; the others
/// parse so the refusal can be precise (536 instead of 501).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtLevel {
    Clear,
    Safe,
    Confidential,
    Private,
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(String),
    Acct(String),
    /// The mechanism, upper-cased (`TLS`, `TLS-C`, `SSL`, ...).
    Auth(String),
    Pbsz(u64),
    Prot(ProtLevel),
    Ccc,
    Cwd(String),
    Cdup,
    Pwd,
    Quit,
    Rein,
    Port(HostPort),
    Eprt(HostPort),
    Pasv,
    /// `EPSV`, `EPSV ALL` (true), or `EPSV <protocol>`.
    Epsv {
        all: bool,
        protocol: Option<u8>,
    },
    /// `TYPE A` / `TYPE A N` (false) or `TYPE I` / `TYPE L 8` (true).
    Type {
        binary: bool,
    },
    Stru(char),
    Mode(char),
    Retr(String),
    Stor(String),
    Stou,
    Appe(String),
    Allo,
    Rest(u64),
    Rnfr(String),
    Rnto(String),
    Abor,
    Dele(String),
    Rmd(String),
    Mkd(String),
    List(Option<String>),
    Nlst(Option<String>),
    Mlsd(Option<String>),
    Mlst(Option<String>),
    Size(String),
    Mdtm(String),
    /// `MFMT YYYYMMDDHHMMSS path` (draft-somers-ftp-mfxx): set the modification time, in
    /// seconds since the epoch (UTC).
    Mfmt(i64, String),
    Site(String),
    Syst,
    Stat(Option<String>),
    Help(Option<String>),
    Noop,
    Feat,
    Opts(String),
}

impl Command {
    /// The verb, for audit records (never the argument: `PASS` carries a secret).
    pub fn verb(&self) -> &'static str {
        use Command::*;
        match self {
            User(_) => "USER",
            Pass(_) => "PASS",
            Acct(_) => "ACCT",
            Auth(_) => "AUTH",
            Pbsz(_) => "PBSZ",
            Prot(_) => "PROT",
            Ccc => "CCC",
            Cwd(_) => "CWD",
            Cdup => "CDUP",
            Pwd => "PWD",
            Quit => "QUIT",
            Rein => "REIN",
            Port(_) => "PORT",
            Eprt(_) => "EPRT",
            Pasv => "PASV",
            Epsv { .. } => "EPSV",
            Type { .. } => "TYPE",
            Stru(_) => "STRU",
            Mode(_) => "MODE",
            Retr(_) => "RETR",
            Stor(_) => "STOR",
            Stou => "STOU",
            Appe(_) => "APPE",
            Allo => "ALLO",
            Rest(_) => "REST",
            Rnfr(_) => "RNFR",
            Rnto(_) => "RNTO",
            Abor => "ABOR",
            Dele(_) => "DELE",
            Rmd(_) => "RMD",
            Mkd(_) => "MKD",
            List(_) => "LIST",
            Nlst(_) => "NLST",
            Mlsd(_) => "MLSD",
            Mlst(_) => "MLST",
            Size(_) => "SIZE",
            Mdtm(_) => "MDTM",
            Mfmt(..) => "MFMT",
            Site(_) => "SITE",
            Syst => "SYST",
            Stat(_) => "STAT",
            Help(_) => "HELP",
            Noop => "NOOP",
            Feat => "FEAT",
            Opts(_) => "OPTS",
        }
    }
}

/// Why a line is not a command; each maps to the reply RFC 959 prescribes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// 500: not a command we know (`SMNT`, `XCRC`, typos).
    Unknown(String),
    /// 501: a known command with a missing or malformed argument.
    BadArgument {
        verb: &'static str,
        why: &'static str,
    },
    /// 504: a known command with a parameter we do not implement (`TYPE E`, `MODE B`).
    UnsupportedParameter { verb: &'static str },
}

impl ParseError {
    pub fn code(&self) -> u16 {
        match self {
            ParseError::Unknown(_) => 500,
            ParseError::BadArgument { .. } => 501,
            ParseError::UnsupportedParameter { .. } => 504,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ParseError::Unknown(v) => format!("Unknown command {v:?}"),
            ParseError::BadArgument { verb, why } => format!("{verb}: {why}"),
            ParseError::UnsupportedParameter { verb } => {
                format!("{verb}: parameter not implemented")
            }
        }
    }
}

/// Splits a line into its verb and argument: the verb ends at the first whitespace character
/// of any kind (`PASS<TAB>secret` is `PASS` with argument `secret`, never a verb that holds the
/// password); the argument is everything after that one separator, kept as sent (a path may
/// contain spaces). The one place where a line is split: parsing and auditing agree.
pub fn split_command(line: &str) -> (&str, Option<&str>) {
    match line.char_indices().find(|(_, c)| c.is_whitespace()) {
        Some((i, c)) => (&line[..i], Some(&line[i + c.len_utf8()..])),
        None => (line, None),
    }
}

/// An unknown verb as a reply may echo it: at most 16 characters, and nothing of one that
/// starts like `PASS` or `ACCT` (`PASSsecret` sent without a separator).
fn shown_verb(verb: &str) -> String {
    let upper = verb.to_ascii_uppercase();
    match ["PASS", "ACCT"].into_iter().find(|s| upper.starts_with(s)) {
        Some(secret) => format!("{secret}…"),
        None => verb.chars().take(16).collect(),
    }
}

/// Parses one line (without CRLF). The verb is case-insensitive; see [`split_command`].
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let (verb, arg) = split_command(line);
    let upper = verb.to_ascii_uppercase();
    let v: &'static str = VERBS
        .iter()
        .find(|k| **k == upper)
        .copied()
        .ok_or_else(|| ParseError::Unknown(shown_verb(verb)))?;
    let bad = |why: &'static str| ParseError::BadArgument { verb: v, why };
    let need = || -> Result<String, ParseError> {
        match arg {
            Some(a) if !a.is_empty() => Ok(a.to_owned()),
            _ => Err(bad("an argument is required")),
        }
    };
    let none = || -> Result<(), ParseError> {
        match arg {
            None => Ok(()),
            Some(a) if a.trim().is_empty() => Ok(()),
            Some(_) => Err(bad("takes no argument")),
        }
    };
    let opt = || arg.filter(|a| !a.trim().is_empty()).map(str::to_owned);
    use Command::*;
    Ok(match v {
        "USER" => User(need()?),
        "PASS" => Pass(arg.unwrap_or_default().to_owned()),
        "ACCT" => Acct(need()?),
        "AUTH" => Auth(need()?.trim().to_ascii_uppercase()),
        "PBSZ" => Pbsz(
            need()?
                .trim()
                .parse()
                .map_err(|_| bad("the buffer size must be a decimal number"))?,
        ),
        "PROT" => Prot(match need()?.trim().to_ascii_uppercase().as_str() {
            "C" => ProtLevel::Clear,
            "S" => ProtLevel::Safe,
            "E" => ProtLevel::Confidential,
            "P" => ProtLevel::Private,
            _ => return Err(bad("the level must be C, S, E or P")),
        }),
        "CCC" => none().map(|()| Ccc)?,
        "CWD" | "XCWD" => Cwd(need()?),
        "CDUP" | "XCUP" => none().map(|()| Cdup)?,
        "PWD" | "XPWD" => none().map(|()| Pwd)?,
        "QUIT" => Quit,
        "REIN" => none().map(|()| Rein)?,
        "PORT" => Port(parse_port(&need()?).ok_or_else(|| bad("expected h1,h2,h3,h4,p1,p2"))?),
        "EPRT" => {
            Eprt(parse_eprt(&need()?).ok_or_else(|| bad("expected |1|ip|port| or |2|ip6|port|"))?)
        }
        "PASV" => none().map(|()| Pasv)?,
        "EPSV" => match opt().map(|a| a.trim().to_ascii_uppercase()) {
            None => Epsv {
                all: false,
                protocol: None,
            },
            Some(a) if a == "ALL" => Epsv {
                all: true,
                protocol: None,
            },
            Some(a) => match a.parse::<u8>() {
                Ok(p) if p == 1 || p == 2 => Epsv {
                    all: false,
                    protocol: Some(p),
                },
                Ok(_) => return Err(ParseError::UnsupportedParameter { verb: v }),
                Err(_) => return Err(bad("expected ALL, 1 or 2")),
            },
        },
        "TYPE" => {
            let a = need()?.to_ascii_uppercase();
            let mut words = a.split_ascii_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("A"), None | Some("N"), None) => Type { binary: false },
                (Some("I"), None, None) | (Some("L"), Some("8"), None) => Type { binary: true },
                (Some("A" | "E" | "L"), _, _) => {
                    return Err(ParseError::UnsupportedParameter { verb: v });
                }
                _ => return Err(bad("expected A, A N, I or L 8")),
            }
        }
        "STRU" => match need()?.trim().to_ascii_uppercase().as_str() {
            "F" => Stru('F'),
            "R" | "P" => return Err(ParseError::UnsupportedParameter { verb: v }),
            _ => return Err(bad("expected F")),
        },
        "MODE" => match need()?.trim().to_ascii_uppercase().as_str() {
            "S" => Mode('S'),
            "B" | "C" | "Z" => return Err(ParseError::UnsupportedParameter { verb: v }),
            _ => return Err(bad("expected S")),
        },
        "RETR" => Retr(need()?),
        "STOR" => Stor(need()?),
        "STOU" => Stou,
        "APPE" => Appe(need()?),
        "ALLO" => Allo,
        "REST" => Rest(
            need()?
                .trim()
                .parse()
                .map_err(|_| bad("the restart marker must be a byte offset"))?,
        ),
        "RNFR" => Rnfr(need()?),
        "RNTO" => Rnto(need()?),
        "ABOR" => none().map(|()| Abor)?,
        "DELE" => Dele(need()?),
        "RMD" | "XRMD" => Rmd(need()?),
        "MKD" | "XMKD" => Mkd(need()?),
        "LIST" => List(opt()),
        "NLST" => Nlst(opt()),
        "MLSD" => Mlsd(opt()),
        "MLST" => Mlst(opt()),
        "SIZE" => Size(need()?),
        "MDTM" => Mdtm(need()?),
        "MFMT" => {
            let arg = need()?;
            let (time, path) = arg
                .split_once(' ')
                .ok_or_else(|| bad("MFMT needs a time and a path"))?;
            let t =
                parse_timeval(time).ok_or_else(|| bad("the time must be YYYYMMDDHHMMSS (UTC)"))?;
            if path.is_empty() {
                return Err(bad("MFMT needs a path"));
            }
            Mfmt(t, path.to_owned())
        }
        "SITE" => Site(need()?),
        "SYST" => none().map(|()| Syst)?,
        "STAT" => Stat(opt()),
        "HELP" => Help(opt()),
        "NOOP" => Noop,
        "FEAT" => none().map(|()| Feat)?,
        "OPTS" => Opts(need()?),
        _ => unreachable!("every verb in VERBS is matched"),
    })
}

const VERBS: &[&str] = &[
    "USER", "PASS", "ACCT", "AUTH", "PBSZ", "PROT", "CCC", "CWD", "XCWD", "CDUP", "XCUP", "PWD",
    "XPWD", "QUIT", "REIN", "PORT", "EPRT", "PASV", "EPSV", "TYPE", "STRU", "MODE", "RETR", "STOR",
    "STOU", "APPE", "ALLO", "REST", "RNFR", "RNTO", "ABOR", "DELE", "RMD", "XRMD", "MKD", "XMKD",
    "LIST", "NLST", "MLSD", "MLST", "SIZE", "MDTM", "SITE", "SYST", "STAT", "HELP", "NOOP", "FEAT",
    "OPTS", "MFMT",
];

/// `YYYYMMDDHHMMSS` (UTC; a fraction after a dot is accepted and dropped) as Unix seconds.
pub fn parse_timeval(s: &str) -> Option<i64> {
    let whole = s.split_once('.').map_or(s, |(w, _)| w);
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| whole[r].parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, se) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&mo) || d < 1 || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > days_in[(mo - 1) as usize] {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

/// `h1,h2,h3,h4,p1,p2` (RFC 959).
fn parse_port(a: &str) -> Option<HostPort> {
    let n: Vec<u8> = a
        .trim()
        .split(',')
        .map(|p| p.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .ok()?;
    let [a, b, c, d, p1, p2] = n[..] else {
        return None;
    };
    Some(HostPort {
        ip: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        port: u16::from(p1) << 8 | u16::from(p2),
    })
}

/// `<d><proto><d><addr><d><port><d>` with any printable delimiter (RFC 2428).
fn parse_eprt(a: &str) -> Option<HostPort> {
    let a = a.trim();
    let d = a.chars().next()?;
    if !(33..=126).contains(&(d as u32)) {
        return None;
    }
    let parts: Vec<&str> = a.split(d).collect();
    let ["", proto, addr, port, ""] = parts[..] else {
        return None;
    };
    let ip: IpAddr = addr.parse().ok()?;
    match (proto, ip) {
        ("1", IpAddr::V4(_)) | ("2", IpAddr::V6(_)) => {}
        _ => return None,
    }
    Some(HostPort {
        ip,
        port: port.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfmt_takes_a_utc_time_and_a_path_with_spaces() {
        assert_eq!(
            parse("MFMT 20240229123456 /in/a b.txt"),
            Ok(Command::Mfmt(1_709_210_096, "/in/a b.txt".into()))
        );
        assert_eq!(
            parse("MFMT 19700101000000.123 x"),
            Ok(Command::Mfmt(0, "x".into()))
        );
        for bad in [
            "MFMT",
            "MFMT 20240229123456",
            "MFMT 20230229123456 x",
            "MFMT 2024022912345 x",
            "MFMT 20241301000000 x",
            "MFMT 2024022912345a x",
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
        // The inverse of the listing's time format, across the range.
        for t in [0i64, 951_782_400, 1_709_210_096, 4_102_444_799] {
            assert_eq!(parse_timeval(&crate::listing::timeval(t)), Some(t));
        }
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("user alice"), Ok(Command::User("alice".into())));
        assert_eq!(
            parse("RETR /dir/a file.txt"),
            Ok(Command::Retr("/dir/a file.txt".into()))
        );
        assert_eq!(parse("AUTH tls"), Ok(Command::Auth("TLS".into())));
        assert_eq!(parse("PBSZ 0"), Ok(Command::Pbsz(0)));
        assert_eq!(parse("PROT P"), Ok(Command::Prot(ProtLevel::Private)));
        assert_eq!(parse("PROT C"), Ok(Command::Prot(ProtLevel::Clear)));
        assert_eq!(parse("TYPE L 8"), Ok(Command::Type { binary: true }));
        assert_eq!(parse("REST 1048576"), Ok(Command::Rest(1_048_576)));
        assert_eq!(
            parse("EPSV ALL"),
            Ok(Command::Epsv {
                all: true,
                protocol: None
            })
        );
        assert_eq!(parse("LIST"), Ok(Command::List(None)));
        assert_eq!(parse("LIST -la"), Ok(Command::List(Some("-la".into()))));
        assert_eq!(parse("PASS"), Ok(Command::Pass(String::new())));
        assert_eq!(
            parse("PORT 192,168,1,2,7,138"),
            Ok(Command::Port(HostPort {
                ip: "192.168.1.2".parse().unwrap(),
                port: 1930
            }))
        );
        assert_eq!(
            parse("EPRT |2|::1|5282|"),
            Ok(Command::Eprt(HostPort {
                ip: "::1".parse().unwrap(),
                port: 5282
            }))
        );
    }

    #[test]
    fn malformed_arguments_get_precise_codes() {
        for (line, code) in [
            ("FROB x", 500),
            ("", 500),
            ("USER", 501),
            ("PBSZ lots", 501),
            ("PROT X", 501),
            ("PORT 1,2,3,4,5", 501),
            ("PORT 1,2,3,4,5,256", 501),
            ("EPRT |1|::1|21|", 501),
            ("EPRT |1|10.0.0.1|99999|", 501),
            ("REST -1", 501),
            ("PASV now", 501),
            ("TYPE E", 504),
            ("MODE B", 504),
            ("STRU R", 504),
            ("EPSV 3", 504),
        ] {
            assert_eq!(parse(line).map_err(|e| e.code()), Err(code), "{line:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_line_parses_or_errs_without_panicking() {
        for line in [
            "EPRT |2|2001:db8::7|40000|",
            "PORT 10,0,0,1,156,64",
            "TYPE L 8",
            "RETR /a/b c",
            "OPTS UTF8 ON",
        ] {
            for cut in 0..=line.len() {
                if line.is_char_boundary(cut) {
                    let _ = parse(&line[..cut]);
                }
            }
        }
    }

    #[test]
    fn the_verb_never_carries_the_argument() {
        assert_eq!(parse("PASS hunter2").unwrap().verb(), "PASS");
        assert_eq!(parse("PASS\thunter2"), Ok(Command::Pass("hunter2".into())));
        assert_eq!(split_command("PASS\u{a0}x y"), ("PASS", Some("x y")));
        assert_eq!(split_command("NOOP"), ("NOOP", None));
        let unknown = parse("passHunter2").unwrap_err();
        assert!(!unknown.message().contains("Hunter2"), "{unknown:?}");
        assert!(!format!("{:?}", parse("FROB hunter2")).contains("hunter2"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic stand-in for the fuzz target: pseudo-random lines.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let mut s = String::new();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"PORTEPRTYPEAUTHLS |,.:0123456789aZ\t-";
                s.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
            }
            let _ = parse(&s);
        }
    }
}
