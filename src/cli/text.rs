//! Text from outside keytrail, made safe to print: every string a trail, a module or
//! another user's process supplies (labels, user and process names, messages, stream
//! ids, file names) reaches a terminal only through [`escape`].
//!
//! A terminal obeys escape sequences (colours, cursor moves, window titles, in some
//! terminals clipboard writes); bidirectional controls reorder what is shown (a label
//! `key\u{202e}txt.exe` reads as `keyexe.txt`); line and paragraph separators and NUL
//! split or hide text. So every character of Unicode's general categories Cc (controls,
//! C0 and C1), Cf (format: bidi marks and overrides, zero-width characters, soft hyphen,
//! tags), Zl and Zp (line and paragraph separators) is written as `\u{…}`, and so are
//! space separators other than U+0020 (a no-break or ideographic space makes two labels
//! look alike), private-use characters (no defined appearance) and unassigned code
//! points (a later Unicode version may make them format characters). Everything else,
//! accented letters and other scripts included, is printed as it is.

use std::borrow::Cow;
use std::io::Write;
use unicode_general_category::{GeneralCategory as Gc, get_general_category};

/// Whether `c` is written escaped (see the module documentation).
#[inline]
pub fn needs_escape(c: char) -> bool {
    if (' '..='~').contains(&c) {
        return false;
    }
    matches!(
        get_general_category(c),
        Gc::Control
            | Gc::Format
            | Gc::LineSeparator
            | Gc::ParagraphSeparator
            | Gc::SpaceSeparator
            | Gc::PrivateUse
            | Gc::Surrogate
            | Gc::Unassigned
    )
}

/// `s` with every character that [`needs_escape`] written as `\u{hex}`.
pub fn escape(s: &str) -> Cow<'_, str> {
    let plain = |b: &u8| (b' '..=b'~').contains(b);
    if s.as_bytes().iter().all(plain) || !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Bytes that should be text (another process's output) escaped the same way; bytes that
/// are not UTF-8 become U+FFFD.
pub fn escape_bytes(b: &[u8]) -> String {
    escape(&String::from_utf8_lossy(b)).into_owned()
}

/// Prints one line on stdout with everything in it escaped, the line end included: a
/// value carrying a newline cannot start a line of its own. Used by [`outln!`].
pub fn print_line(line: &str) {
    println!("{}", escape(line));
}

/// Prints one line on stderr, escaped like [`print_line`]. Used by [`errln!`].
pub fn eprint_line(line: &str) {
    eprintln!("{}", escape(line));
}

/// `println!` for text that carries outside strings: the whole formatted line is
/// escaped, so no interpolated value can be missed. A line break inside the format
/// string would be escaped too: use one call per line.
macro_rules! outln {
    () => {
        println!()
    };
    ($($arg:tt)*) => {
        $crate::cli::text::print_line(&format!($($arg)*))
    };
}
pub(crate) use outln;

/// `eprintln!` with the whole line escaped, like [`outln!`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::text::eprint_line(&format!($($arg)*))
    };
}
pub(crate) use errln;

/// Writes `value` as pretty JSON on stdout, streaming, with every character that
/// [`needs_escape`] written as a JSON `\uXXXX` escape: the output stays the same JSON
/// and cannot drive a terminal it is printed on.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = JsonEscaper::new(std::io::BufWriter::with_capacity(64 * 1024, stdout.lock()));
    serde_json::to_writer_pretty(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// A writer that passes serde_json's output through, replacing each character that
/// [`needs_escape`] with its JSON escape. serde_json already escapes C0 controls; every
/// other such character can only occur inside a JSON string, where `\uXXXX` means the
/// same character, so the document is unchanged as JSON.
pub struct JsonEscaper<W: Write> {
    inner: W,
    /// The start of a UTF-8 sequence split across two writes.
    pending: Vec<u8>,
}

impl<W: Write> JsonEscaper<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        JsonEscaper {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, text: &str) -> std::io::Result<()> {
        if text.is_ascii() && !text.as_bytes().contains(&0x7f) {
            return self.inner.write_all(text.as_bytes());
        }
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c.is_ascii() && c != '\u{7f}' || !needs_escape(c) {
                continue;
            }
            self.inner.write_all(&text.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(self.inner, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        self.inner.write_all(&text.as_bytes()[start..])
    }
}

impl<W: Write> Write for JsonEscaper<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let joined;
        let bytes: &[u8] = if self.pending.is_empty() {
            buf
        } else {
            self.pending.extend_from_slice(buf);
            joined = std::mem::take(&mut self.pending);
            &joined
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.emit(text)?;
                    rest = &[];
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    self.emit(std::str::from_utf8(valid).unwrap_or_default())?;
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for its remainder.
                        None => {
                            self.pending = after.to_vec();
                            rest = &[];
                        }
                        // Not UTF-8 (serde_json never writes such bytes): as they are.
                        Some(n) => {
                            self.inner.write_all(&after[..n])?;
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.inner.write_all(&p)?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The categories the escaping promises to cover, tested over every `char`.
    fn must_escape(c: char) -> bool {
        matches!(
            get_general_category(c),
            Gc::Control | Gc::Format | Gc::LineSeparator | Gc::ParagraphSeparator
        )
    }

    #[test]
    fn every_control_format_and_separator_character_is_escaped() {
        let mut count = 0;
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            if must_escape(c) {
                count += 1;
                let s = format!("a{c}b");
                let e = escape(&s);
                assert_eq!(e, format!("a\\u{{{:x}}}b", c as u32), "U+{:04X}", c as u32);
                assert!(!e.contains(c));
            }
        }
        // 65 controls, 170-odd format characters, one line and one paragraph separator.
        assert!(count > 230, "{count}");
        // Independently of the category table: the characters the trail has seen abused.
        for c in [
            '\0',
            '\u{7}',
            '\u{8}',
            '\t',
            '\n',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9b}',
            '\u{ad}',
            '\u{61c}',
            '\u{180e}',
            '\u{200b}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{e0001}',
            '\u{a0}',
            '\u{3000}',
            '\u{e000}',
            '\u{10ffff}',
        ] {
            assert!(needs_escape(c), "U+{:04X}", c as u32);
        }
        for s in ["payments-kek", "café", "ключ", "鍵", "€ 5", "😀", "a\\b"] {
            assert_eq!(escape(s), s);
        }
        assert_eq!(escape_bytes(b"ok\x1b[2J\xff"), "ok\\u{1b}[2J\u{fffd}");
    }

    #[test]
    fn json_output_escapes_the_same_characters_and_stays_the_same_json() {
        let all: String = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|c| must_escape(*c) || *c == 'é' || *c == '鍵')
            .collect();
        let value = serde_json::json!({ "label": all, "plain": "x" });
        let mut out = Vec::new();
        // Tiny writes, so that UTF-8 sequences are split between them.
        {
            let mut w = JsonEscaper::new(&mut out);
            let text = serde_json::to_vec_pretty(&value).expect("json");
            for chunk in text.chunks(3) {
                w.write_all(chunk).expect("write");
            }
            w.flush().expect("flush");
        }
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.chars().any(|c| must_escape(c) && c != '\n'), "{text}");
        assert!(text.contains('é') && text.contains('鍵'));
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, value);
    }
}
