//! Directory listings and file facts as FTP clients expect them: `MLSD`/`MLST` fact lines
//! (RFC 3659, machine-readable, the ones to trust), `LIST` lines in the `ls -l` shape most
//! clients parse, `NLST` names, and `MDTM` times.

/// What a listing shows of one entry. The front end fills it from the backend's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub dir: bool,
    pub size: u64,
    /// Modification time, seconds since the epoch (UTC).
    pub mtime: i64,
    /// Permission bits (the low 9 of the mode), when the backend reports them.
    pub perms: Option<u32>,
}

/// `type=file;size=12;modify=20261125103000; name` (one `MLSD` line, without CRLF). Names
/// with CR or LF are not listable (they would break the line framing) and give `None`.
pub fn mlsd_line(e: &Entry) -> Option<String> {
    if e.name.contains(['\r', '\n']) {
        return None;
    }
    Some(format!(
        "type={};size={};modify={}; {}",
        if e.dir { "dir" } else { "file" },
        e.size,
        timeval(e.mtime),
        e.name
    ))
}

/// An `ls -l`-style line for `LIST`.
pub fn list_line(e: &Entry) -> Option<String> {
    if e.name.contains(['\r', '\n']) {
        return None;
    }
    let mode = e.perms.unwrap_or(if e.dir { 0o755 } else { 0o644 });
    let mut bits = String::with_capacity(10);
    bits.push(if e.dir { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let m = (mode >> shift) & 7;
        bits.push(if m & 4 != 0 { 'r' } else { '-' });
        bits.push(if m & 2 != 0 { 'w' } else { '-' });
        bits.push(if m & 1 != 0 { 'x' } else { '-' });
    }
    let (y, mo, d, _, _, _) = civil(e.mtime);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    Some(format!(
        "{bits} 1 ftp ftp {:>12} {} {d:>2} {y:>5} {}",
        e.size,
        MONTHS[(mo - 1) as usize],
        e.name
    ))
}

/// `YYYYMMDDHHMMSS` in UTC, as `MDTM` and `modify=` want it.
pub fn timeval(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

/// Days-from-civil inverse (Howard Hinnant's algorithm): UTC calendar fields of a Unix time.
fn civil(unix: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs % 3600 / 60) as u32,
        (secs % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, dir: bool) -> Entry {
        Entry {
            name: name.into(),
            dir,
            size: 1234,
            mtime: 1_795_602_600, // 2026-11-25T10:30:00Z
            perms: Some(0o640),
        }
    }

    #[test]
    fn times_are_utc_calendar_fields() {
        assert_eq!(timeval(0), "19700101000000");
        assert_eq!(timeval(1_795_602_600), "20261125103000");
        assert_eq!(timeval(951_782_400), "20000229000000"); // a leap day
        assert_eq!(timeval(-1), "19691231235959");
    }

    #[test]
    fn listing_lines() {
        assert_eq!(
            mlsd_line(&entry("report 1.csv", false)).unwrap(),
            "type=file;size=1234;modify=20261125103000; report 1.csv"
        );
        assert_eq!(
            list_line(&entry("inbound", true)).unwrap(),
            "drw-r----- 1 ftp ftp         1234 Nov 25  2026 inbound"
        );
        assert_eq!(mlsd_line(&entry("evil\r\n226 done", false)), None);
        assert_eq!(list_line(&entry("evil\nname", false)), None);
    }
}
