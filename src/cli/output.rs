//! Output shared by every command: text or JSON from one report value, and the ways bytes,
//! sizes and times are printed.
//!
//! A command builds a report (a `Serialize` value that also knows how to print itself as
//! text, [`Render`]) and hands it to [`emit`]; it never decides the format itself.

use std::io::{self, Write};

use serde::Serialize;

use super::CliError;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines for a person.
    Text,
    /// One JSON document (pretty-printed) for a machine.
    Json,
}

impl Format {
    /// `Json` when `json` is set.
    pub fn from_json_flag(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// A report that prints itself as text; its JSON form is its `Serialize` form.
pub trait Render: Serialize {
    /// Writes the text form.
    fn render_text(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// Prints `report` to `out` in `format`.
pub fn emit(out: &mut dyn Write, format: Format, report: &impl Render) -> Result<(), CliError> {
    match format {
        Format::Text => report.render_text(out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report).map_err(|e| {
                CliError::Output(match e.io_error_kind() {
                    Some(kind) => io::Error::from(kind),
                    None => io::Error::other(e),
                })
            })?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Bytes as text: printable ASCII as is, a backslash as `\\`, every other byte as `\xNN`.
/// [`unescape_bytes`] reverses it.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// Like [`escape_bytes`], but cut after `max_bytes` input bytes with a note of the length.
pub fn escape_bytes_cut(bytes: &[u8], max_bytes: usize) -> String {
    match bytes.get(..max_bytes) {
        Some(head) if bytes.len() > max_bytes => {
            format!("{}... ({} bytes)", escape_bytes(head), bytes.len())
        }
        _ => escape_bytes(bytes),
    }
}

/// Decodes the escapes [`escape_bytes`] writes (`\\`, `\xNN`); other characters stand for
/// their UTF-8 bytes.
pub fn unescape_bytes(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some((_, '\\')) => out.push(b'\\'),
            Some((_, 'x')) => {
                let hex: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
                let b = (hex.len() == 2)
                    .then(|| u8::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| {
                        format!("bad escape at character {i}: \\x needs two hex digits")
                    })?;
                out.push(b);
            }
            _ => {
                return Err(format!(
                    "bad escape at character {i}: only \\\\ and \\xNN are escapes"
                ))
            }
        }
    }
    Ok(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex (upper or lower case, even length).
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.as_bytes();
    if t.len() % 2 != 0 {
        return Err(format!("hex {text:?} has an odd number of digits"));
    }
    t.chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{text:?} is not hex"))
        })
        .collect()
}

/// A byte count for people: `512 B`, `4.0 KiB`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_printable_ascii_and_roundtrips() {
        let raw = b"user:42 \\ \x00\xff\n~";
        let e = escape_bytes(raw);
        assert_eq!(e, "user:42 \\\\ \\x00\\xff\\x0a~");
        assert_eq!(unescape_bytes(&e).unwrap(), raw);
        assert!(unescape_bytes("\\x4").is_err());
        assert!(unescape_bytes("\\n").is_err());
        assert_eq!(escape_bytes_cut(b"abcdef", 3), "abc... (6 bytes)");
        assert_eq!(escape_bytes_cut(b"abc", 3), "abc");
    }

    #[test]
    fn hex_roundtrips_and_rejects_garbage() {
        assert_eq!(hex(b"\x01\xab"), "01ab");
        assert_eq!(parse_hex("01AB").unwrap(), b"\x01\xab");
        assert!(parse_hex("0").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("é1").is_err());
    }

    #[test]
    fn sizes_and_times_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            format_unix_ms(1_709_210_096_789),
            "2024-02-29 12:34:56.789 UTC"
        );
    }
}
