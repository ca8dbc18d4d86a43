//! Line prefixes: finds sshd's own message in a syslog or journal line.
//!
//! Accepted: RFC 3164 (`Mmm dd HH:MM:SS`, with or without a year, optional
//! `<PRI>`), rsyslog ISO 8601, RFC 5424 (structured data skipped), journalctl
//! `short`, `short-iso` and `short-precise`, and bare `host sshd[pid]: msg`
//! (journal exports without a time). The process must be `sshd` or
//! `sshd-session` (OpenSSH 9.8+), with or without `[pid]`, or fail2ban-style
//! `[sshd]`. Any other program's line is not sshd's and yields `None`: a
//! `logger "Invalid user x from 1.2.3.4"` must not count.
//!
//! The prefix is written by the log daemon, not the peer, so it is parsed from
//! the left; only the message after it carries attacker text.

use crate::time::{
    checked_days_from_civil, days_from_civil, days_in_month, digits, parse_hms, parse_rfc3339_ms,
};

/// When a line says it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTime {
    /// A complete timestamp: epoch milliseconds.
    Absolute(i64),
    /// RFC 3164 without a year: month (1-12), day, milliseconds of the day.
    NoYear {
        month: u32,
        day: u32,
        ms_of_day: i64,
    },
}

impl LineTime {
    /// Epoch milliseconds, taking `year` for a timestamp that has none.
    pub fn resolve(self, year: i64) -> i64 {
        match self {
            LineTime::Absolute(ms) => ms,
            LineTime::NoYear {
                month,
                day,
                ms_of_day,
            } => days_from_civil(year, month, day) * 86_400_000 + ms_of_day,
        }
    }
}

/// An sshd line split into its parts. The message has sshd's own decorations
/// (`error: `, `fatal: `, Solaris `[ID n facility.level] `) removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshdLine<'a> {
    pub time: Option<LineTime>,
    pub host: Option<&'a str>,
    pub pid: Option<u32>,
    pub message: &'a str,
}

/// Splits `line` into prefix and sshd message, or `None` when it is not a line
/// written by sshd.
pub fn parse_line(line: &str) -> Option<SshdLine<'_>> {
    // By byte: `trim_end_matches` with a set of chars decodes each one.
    let end = line
        .bytes()
        .rposition(|c| c != b'\n' && c != b'\r')
        .map_or(0, |i| i + 1);
    let line = &line[..end];
    let mut rest = line;
    if rest.as_bytes().first() == Some(&b'<') {
        let close = rest.as_bytes().iter().take(5).position(|&c| c == b'>')?;
        digits(&rest.as_bytes()[1..close])?;
        rest = &rest[close + 1..];
        if let Some(after_version) = rest.strip_prefix("1 ") {
            return parse_rfc5424(after_version);
        }
    }
    let (time, after_time) = parse_time(rest);
    rest = after_time.trim_start_matches(' ');

    let (first, after_first) = split_token(rest);
    let (host, pid, message) = if let Some(pid) = process_token(first, after_first) {
        (None, pid.0, pid.1)
    } else {
        let (mut second, mut after_second) = split_token(after_first.trim_start_matches(' '));
        if second == first && !first.is_empty() {
            // Some relays write the host name twice (`host host sshd[1]: ...`).
            (second, after_second) = split_token(after_second.trim_start_matches(' '));
        }
        let (pid, message) = process_token(second, after_second)?;
        (Some(first).filter(|h| !h.is_empty()), pid, message)
    };
    Some(SshdLine {
        time: time.resolve(),
        host,
        pid,
        message: strip_decorations(message),
    })
}

fn split_token(s: &str) -> (&str, &str) {
    match memchr::memchr(b' ', s.as_bytes()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Recognises the process token (`sshd[12]:`, `sshd:`, `sshd-session[12]:`,
/// `[sshd]:`, `[sshd]`) and returns the pid and the message after it.
fn process_token<'a>(token: &str, after: &'a str) -> Option<(Option<u32>, &'a str)> {
    let message = after.strip_prefix(' ').unwrap_or(after);
    if token == "[sshd]:" || token == "[sshd]" {
        return Some((None, message));
    }
    let token = token.strip_suffix(':')?;
    let rest = token
        .strip_prefix("sshd-session")
        .or_else(|| token.strip_prefix("sshd"))?;
    if rest.is_empty() {
        return Some((None, message));
    }
    let pid = rest.strip_prefix('[')?.strip_suffix(']')?;
    Some((Some(digits(pid.as_bytes())?), message))
}

/// 1-12 for an English month abbreviation (as syslog writes it).
fn month_number(m: [u8; 3]) -> Option<u32> {
    Some(match &m {
        b"Jan" => 1,
        b"Feb" => 2,
        b"Mar" => 3,
        b"Apr" => 4,
        b"May" => 5,
        b"Jun" => 6,
        b"Jul" => 7,
        b"Aug" => 8,
        b"Sep" => 9,
        b"Oct" => 10,
        b"Nov" => 11,
        b"Dec" => 12,
        _ => return None,
    })
}

/// Parses a leading timestamp, returning it (if any) and the rest of the line.
fn parse_time(s: &str) -> (Time<'_>, &str) {
    let b = s.as_bytes();
    if b.len() >= 19 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' {
        let end = memchr::memchr(b' ', b).unwrap_or(b.len());
        return (Time::Iso(&s[..end]), &s[end..]);
    }
    match parse_bsd_time(b) {
        Some((time, used)) => (Time::Parsed(time), &s[used..]),
        None => (Time::None, s),
    }
}

/// An ISO 8601 timestamp is only converted once the line proved to be
/// sshd's: most lines of a host's log are not, and the calendar arithmetic
/// is the costliest part of the prefix.
enum Time<'a> {
    None,
    Iso(&'a str),
    Parsed(LineTime),
}

impl Time<'_> {
    fn resolve(self) -> Option<LineTime> {
        match self {
            Time::None => None,
            Time::Iso(text) => parse_rfc3339_ms(text).ok().map(LineTime::Absolute),
            Time::Parsed(t) => Some(t),
        }
    }
}

/// `Mmm dd HH:MM:SS[.frac][ YYYY]` or `Mmm dd YYYY HH:MM:SS`; returns the
/// time and the number of bytes used.
fn parse_bsd_time(b: &[u8]) -> Option<(LineTime, usize)> {
    if b.len() < 15 || b[3] != b' ' {
        return None;
    }
    let month = month_number([b[0], b[1], b[2]])?;
    let mut i = 4;
    if b[i] == b' ' {
        i += 1;
    }
    let day_len = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if day_len == 0 || day_len > 2 || b.get(i + day_len) != Some(&b' ') {
        return None;
    }
    let day = digits(&b[i..i + day_len])?;
    i += day_len + 1;
    let mut year = None;
    if b.len() >= i + 5 && b[i..i + 4].iter().all(u8::is_ascii_digit) && b[i + 4] == b' ' {
        year = Some(i64::from(digits(&b[i..i + 4])?));
        i += 5;
    }
    let (secs, rest) = parse_hms(&b[i..])?;
    i = b.len() - rest.len();
    let mut ms = secs * 1000;
    if b.get(i) == Some(&b'.') {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let mut scale = 100;
        for &c in &b[i + 1..i + 1 + n.min(3)] {
            ms += i64::from(c - b'0') * scale;
            scale /= 10;
        }
        i += 1 + n;
    }
    if year.is_none()
        && b.len() >= i + 5
        && b[i] == b' '
        && b[i + 1..i + 5].iter().all(u8::is_ascii_digit)
        && b.get(i + 5).is_none_or(|&c| c == b' ')
    {
        year = Some(i64::from(digits(&b[i + 1..i + 5])?));
        i += 5;
    }
    let time = match year {
        Some(y) => {
            LineTime::Absolute(checked_days_from_civil(y, month, day).ok()? * 86_400_000 + ms)
        }
        // Without a year, February 29th may be a date: the year is decided later.
        None if day == 0 || day > days_in_month(2000, month) => return None,
        None => LineTime::NoYear {
            month,
            day,
            ms_of_day: ms,
        },
    };
    Some((time, i))
}

/// RFC 5424 after `<PRI>1 `: TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG].
fn parse_rfc5424(s: &str) -> Option<SshdLine<'_>> {
    let (ts, rest) = split_token(s);
    let (host, rest) = split_token(rest.strip_prefix(' ')?);
    let (app, rest) = split_token(rest.strip_prefix(' ')?);
    let (procid, rest) = split_token(rest.strip_prefix(' ')?);
    let (_msgid, rest) = split_token(rest.strip_prefix(' ')?);
    if app != "sshd" && app != "sshd-session" {
        return None;
    }
    let rest = skip_structured_data(rest.strip_prefix(' ')?)?;
    let message = rest.strip_prefix(' ').unwrap_or(rest);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    let time = if ts == "-" {
        None
    } else {
        Some(LineTime::Absolute(parse_rfc3339_ms(ts).ok()?))
    };
    Some(SshdLine {
        time,
        host: (host != "-").then_some(host),
        pid: digits(procid.as_bytes()),
        message: strip_decorations(message),
    })
}

/// Skips `-` or a run of `[id k="v" ...]` elements (values may hold `\]`, `\"`
/// and unescaped `]` inside quotes).
fn skip_structured_data(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('-') {
        return Some(rest);
    }
    let b = s.as_bytes();
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        let mut in_quotes = false;
        i += 1;
        loop {
            match *b.get(i)? {
                b'\\' => i += 1,
                b'"' => in_quotes = !in_quotes,
                b']' if !in_quotes => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    if i == 0 {
        return None;
    }
    Some(&s[i..])
}

/// Removes sshd's level decorations and the Solaris message id. These are
/// printed by sshd's logger before the message proper, so they are trusted.
fn strip_decorations(mut m: &str) -> &str {
    loop {
        // Most messages have no decoration: one byte tells.
        if !matches!(m.as_bytes().first(), Some(b'e' | b'f' | b'[' | b'k')) {
            return m;
        }
        if let Some(r) = m
            .strip_prefix("error: ")
            .or_else(|| m.strip_prefix("fatal: "))
        {
            m = r;
        } else if let Some(r) = m.strip_prefix("[ID ") {
            // `[ID 800047 auth.info] `
            match memchr::memchr(b']', r.as_bytes()) {
                Some(i) if r[..i].split(' ').count() == 2 => {
                    m = r[i + 1..].trim_start_matches(' ');
                }
                _ => return m,
            }
        } else if let Some(r) = m.strip_prefix("kernel:") {
            // journal re-injection: `kernel:[  970.699396]: ` or `kernel: [  970.699397] `
            let r = r.trim_start_matches(' ');
            let Some(r) = r.strip_prefix('[') else {
                return m;
            };
            let Some(i) = memchr::memchr(b']', r.as_bytes()) else {
                return m;
            };
            if !r[..i]
                .trim()
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b'.')
            {
                return m;
            }
            let r = &r[i + 1..];
            m = r.strip_prefix(':').unwrap_or(r).trim_start_matches(' ');
        } else {
            return m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(line: &str) -> Option<&str> {
        parse_line(line).map(|l| l.message)
    }

    #[test]
    fn formats() {
        let l = parse_line("Feb 25 14:34:10 belka sshd[31602]: Failed password for x").unwrap();
        assert_eq!(l.host, Some("belka"));
        assert_eq!(l.pid, Some(31602));
        assert_eq!(l.message, "Failed password for x");
        assert_eq!(
            l.time,
            Some(LineTime::NoYear {
                month: 2,
                day: 25,
                ms_of_day: (14 * 3600 + 34 * 60 + 10) * 1000
            })
        );
        let l =
            parse_line("Jan  5 01:31:41 www sshd[1643]: ROOT LOGIN REFUSED FROM 1.2.3.4").unwrap();
        assert_eq!(l.message, "ROOT LOGIN REFUSED FROM 1.2.3.4");
        let l =
            parse_line("2015-04-16T18:02:50.321974+00:00 host sshd[2716]: pam_unix(sshd:auth): x")
                .unwrap();
        assert_eq!(l.time, Some(LineTime::Absolute(1_429_207_370_321)));
        assert_eq!(l.message, "pam_unix(sshd:auth): x");
        let l = parse_line("2024-01-02T03:04:05+0000 ip-10-0-0-1 sshd-session[77]: Invalid user a from 1.2.3.4 port 5").unwrap();
        assert_eq!(l.host, Some("ip-10-0-0-1"));
        assert_eq!(l.message, "Invalid user a from 1.2.3.4 port 5");
        let l = parse_line("Mar 15 09:20:57.123456 host sshd[28972]: Connection reset by 192.0.2.39 port 14282 [preauth]").unwrap();
        assert!(
            matches!(l.time, Some(LineTime::NoYear { ms_of_day, .. }) if ms_of_day % 1000 == 123)
        );
        let l = parse_line("Feb 25 2024 14:34:10 belka sshd[31602]: x").unwrap();
        assert!(matches!(l.time, Some(LineTime::Absolute(_))));
        let l = parse_line("Feb 25 14:34:10 2024 belka sshd[31602]: x").unwrap();
        assert!(matches!(l.time, Some(LineTime::Absolute(_))));
        assert_eq!(l.host, Some("belka"));
        assert_eq!(
            msg("srv sshd[13709]: error: PAM: Authentication failure for a from b"),
            Some("PAM: Authentication failure for a from b")
        );
        assert_eq!(
            msg("Mar  3 00:17:22 [sshd]: User root from 1.2.3.4 not allowed"),
            Some("User root from 1.2.3.4 not allowed")
        );
        assert_eq!(
            msg("Jun 25 23:53:34 [sshd] User root from 1.2.3.4 not allowed"),
            Some("User root from 1.2.3.4 not allowed")
        );
        assert_eq!(
            msg("Nov 23 21:50:19 sshd[8148]: Disconnecting: x"),
            Some("Disconnecting: x")
        );
        assert_eq!(msg("Mar 29 05:59:23 dusky sshd[20878]: [ID 800047 auth.info] Failed keyboard-interactive"), Some("Failed keyboard-interactive"));
        assert_eq!(
            msg("srv sshd[20878]: kernel:[  970.699396]: Failed x"),
            Some("Failed x")
        );
        assert_eq!(
            msg("srv sshd[20879]: kernel: [  970.699397] Failed x"),
            Some("Failed x")
        );
        assert_eq!(msg("<38>Feb 25 14:34:10 belka sshd[1]: x"), Some("x"));
    }

    #[test]
    fn dates_outside_the_calendar_are_no_timestamps() {
        // As with a day 32, a line whose date is not in the calendar is not
        // read as a syslog line at all.
        assert_eq!(msg("Feb 30 14:34:10 belka sshd[1]: x"), None);
        assert_eq!(msg("Apr 31 14:34:10 belka sshd[1]: x"), None);
        assert_eq!(msg("Feb 29 2023 14:34:10 belka sshd[1]: x"), None);
        assert_eq!(msg("Feb 29 14:34:10 2100 belka sshd[1]: x"), None);
        assert_eq!(msg("<38>1 2019-02-31T17:40:16Z h sshd 1 - - y"), None);
        // Without a year, February 29th waits for the year to be known.
        let l = parse_line("Feb 29 14:34:10 belka sshd[1]: x").unwrap();
        assert!(matches!(
            l.time,
            Some(LineTime::NoYear {
                month: 2,
                day: 29,
                ..
            })
        ));
        let l = parse_line("Feb 29 2024 14:34:10 belka sshd[1]: x").unwrap();
        assert!(matches!(l.time, Some(LineTime::Absolute(_))));
        // An ISO time with an impossible date leaves the line sshd's, untimed.
        let l = parse_line("2019-02-31T17:40:16+00:00 host sshd[2]: y").unwrap();
        assert_eq!((l.time, l.message), (None, "y"));
    }

    #[test]
    fn rfc5424() {
        let l = parse_line("<38>1 2019-07-08T17:40:17.954167-04:00 hostname.example.com sshd 55555 - [timeQuality tzKnown=\"1\" isSynced=\"0\"][xxx@123 test=\"[brackets]\"] Failed unknown for x").unwrap();
        assert_eq!(l.host, Some("hostname.example.com"));
        assert_eq!(l.pid, Some(55555));
        assert_eq!(l.message, "Failed unknown for x");
        assert_eq!(l.time, Some(LineTime::Absolute(1_562_622_017_954)));
        assert_eq!(
            msg("<38>1 2019-07-08T17:40:16Z h sshd 1 - - fatal: y"),
            Some("y")
        );
        assert_eq!(
            msg("<38>1 2019-07-08T17:40:16Z h cron 1 - - Invalid user a from 1.2.3.4"),
            None
        );
    }

    #[test]
    fn other_programs_are_not_sshd() {
        assert_eq!(
            msg("Feb 25 14:34:10 belka logger: Invalid user x from 1.2.3.4"),
            None
        );
        assert_eq!(
            msg("Feb 25 14:34:10 belka sudo[1]: Failed password for x from 1.2.3.4 port 1 ssh2"),
            None
        );
        assert_eq!(msg("Feb 25 14:34:10 belka notsshd[1]: x"), None);
        assert_eq!(msg("Feb 25 14:34:10 belka sshdx[1]: x"), None);
        assert_eq!(msg("Feb 25 14:34:10 belka sshd[x]: x"), None);
        assert_eq!(msg(""), None);
        assert_eq!(msg("Invalid user x from 1.2.3.4"), None);
        // A repeated host name is skipped only when it is the host name again.
        assert_eq!(msg("Feb 25 14:34:10 belka other sshd[1]: x"), None);
        assert_eq!(msg("Feb 25 14:34:10 belka belka logger: x"), None);
        assert_eq!(msg("Feb 25 14:34:10 belka belka belka sshd[1]: x"), None);
    }

    proptest::proptest! {
        /// The engine skips `parse_line` for lines without `sshd` (a SIMD
        /// search): no line without it may parse, whatever its prefix.
        #[test]
        fn only_lines_naming_sshd_parse(
            head in "(<[0-9]{1,3}>(1 )?)?([A-Z][a-z]{2} [ 0-9][0-9] [0-9:]{8}( 20[0-9]{2})? |20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.+]{8,20} )?",
            host in "[a-z0-9.-]{0,12}",
            process in "(ssh|sshd|sshd-session|\\[sshd\\]|ss)(\\[[0-9]{1,5}\\])?:?",
            rest in ".{0,40}",
        ) {
            let line = format!("{head}{host} {host} {process} {rest}");
            if !line.contains("sshd") {
                proptest::prop_assert_eq!(parse_line(&line), None);
            }
            let rfc5424 = format!("<13>1 2026-01-01T00:00:00Z {host} {process} 1 - - {rest}");
            if !rfc5424.contains("sshd") {
                proptest::prop_assert_eq!(parse_line(&rfc5424), None);
            }
        }
    }

    #[test]
    fn repeated_host_name() {
        let l = parse_line("Jan  1 00:00:00 host host sshd[1]: Failed password for x").unwrap();
        assert_eq!(l.host, Some("host"));
        assert_eq!(l.pid, Some(1));
        assert_eq!(l.message, "Failed password for x");
        let l = parse_line("2026-01-01T00:00:00+00:00 ip-10-0-0-1 ip-10-0-0-1 sshd: x").unwrap();
        assert_eq!((l.host, l.pid, l.message), (Some("ip-10-0-0-1"), None, "x"));
    }
}
