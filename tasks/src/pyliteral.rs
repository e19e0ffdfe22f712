//! Python literal parsing and printing, as the reference's metrics see answers.
//!
//! The reference compares answers with `ast.literal_eval`, `str(item)`, `float(text)` and
//! `str.strip()`. No crate reproduces `ast.literal_eval`, so this module is a small
//! hand-written parser for exactly the literal subset it accepts that matters for answers:
//! strings (all prefixes but `f`, escapes, triple quotes, implicit concatenation), bytes,
//! integers (decimal, hex, octal, binary, `_` separators), floats, `None`/`True`/`False`,
//! unary `+`/`-` on numbers, lists, tuples (with or without parentheses), sets and dicts,
//! and `#` comments. Complex numbers are rejected (the metrics would only ever see them
//! inside a list, where the reference would compare `str()` forms; no task uses them).
//!
//! Printing follows Python's `str()`/`repr()` so that set comparisons of `str(item)` give
//! the same result as the reference. Known approximation: `repr` of a string escapes
//! control, separator and common format characters, which is what `str.isprintable` rejects
//! in practice; rare unassigned code points are printed as they are.

use std::fmt::Write as _;

/// A parsed Python literal.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    /// An integer, kept as its decimal text (Python integers are unbounded).
    Int(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    Set(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

/// Why a text is not a Python literal (the position is a byte offset into the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Python literal at byte {pos}: {reason}")]
pub struct LiteralError {
    pub pos: usize,
    pub reason: String,
}

/// Python's `ast.literal_eval(text)` for the supported subset.
pub fn literal_eval(text: &str) -> Result<PyValue, LiteralError> {
    // literal_eval strips leading spaces and tabs before parsing in eval mode.
    let text = text.trim_start_matches([' ', '\t']);
    let mut p = Parser {
        src: text,
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    let first = p.expr()?;
    p.skip_ws();
    // A bare `a, b` at top level is a tuple, as in Python.
    let value = if p.peek() == Some(',') {
        let mut items = vec![first];
        while p.eat(',') {
            p.skip_ws();
            if p.at_end() {
                break;
            }
            items.push(p.expr()?);
            p.skip_ws();
        }
        PyValue::Tuple(items)
    } else {
        first
    };
    p.skip_ws();
    if !p.at_end() {
        return Err(p.err("unexpected text after the literal"));
    }
    Ok(value)
}

/// Python's `str.isspace()` for one character: Unicode whitespace plus the ASCII
/// information separators U+001C..U+001F, which Python also strips.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `text.strip()`.
pub fn py_strip(text: &str) -> &str {
    text.trim_matches(is_py_space)
}

/// Python's `float(text)`: `Some` exactly when Python would not raise.
///
/// Accepts surrounding whitespace, a sign, `inf`/`infinity`/`nan` in any case, decimal
/// literals with an optional exponent, and `_` between digits. (Python also accepts
/// non-ASCII decimal digits; answers do not use them, so they are rejected here.)
pub fn py_float(text: &str) -> Option<f64> {
    let s = py_strip(text);
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = unsigned.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return s.to_ascii_lowercase().parse::<f64>().ok();
    }
    if !valid_decimal_float(unsigned) {
        return None;
    }
    s.replace('_', "").parse::<f64>().ok()
}

/// `digits [. digits?] | . digits`, then an optional exponent; `_` only between digits.
fn valid_decimal_float(s: &str) -> bool {
    fn digits(b: &[u8], mut i: usize) -> (usize, bool) {
        let start = i;
        if i >= b.len() || !b[i].is_ascii_digit() {
            return (i, false);
        }
        while i < b.len() {
            let underscore_between_digits =
                b[i] == b'_' && i > start && i + 1 < b.len() && b[i + 1].is_ascii_digit();
            if !(b[i].is_ascii_digit() || underscore_between_digits) {
                break;
            }
            i += 1;
        }
        (i, true)
    }
    let b = s.as_bytes();
    let (mut i, int_part) = digits(b, 0);
    let mut frac_part = false;
    if i < b.len() && b[i] == b'.' {
        let (j, f) = digits(b, i + 1);
        frac_part = f;
        i = if f { j } else { i + 1 };
    }
    if !int_part && !frac_part {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let (k, ok) = digits(b, j);
        if !ok {
            return false;
        }
        i = k;
    }
    i == b.len()
}

/// Python's `repr(float)` (which is also `str(float)`): the shortest digits that round-trip,
/// in fixed notation when the decimal exponent is in [-4, 16), else scientific with a sign
/// and at least two exponent digits.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` prints the shortest round-trip digits, like Python's repr.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.abs());
    }
    out
}

impl PyValue {
    /// Python's `str(value)`.
    pub fn to_py_str(&self) -> String {
        match self {
            PyValue::Str(s) => s.clone(),
            other => other.repr(),
        }
    }

    /// Python's `repr(value)`.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            PyValue::None => out.push_str("None"),
            PyValue::Bool(true) => out.push_str("True"),
            PyValue::Bool(false) => out.push_str("False"),
            PyValue::Int(digits) => out.push_str(digits),
            PyValue::Float(f) => out.push_str(&float_repr(*f)),
            PyValue::Str(s) => write_str_repr(s, out),
            PyValue::Bytes(b) => write_bytes_repr(b, out),
            PyValue::List(items) => write_seq(items, "[", "]", out),
            PyValue::Tuple(items) if items.len() == 1 => {
                out.push('(');
                items[0].write_repr(out);
                out.push_str(",)");
            }
            PyValue::Tuple(items) => write_seq(items, "(", ")", out),
            PyValue::Set(items) if items.is_empty() => out.push_str("set()"),
            // Python prints sets in hash order; source order is the closest stable choice.
            PyValue::Set(items) => write_seq(items, "{", "}", out),
            PyValue::Dict(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_seq(items: &[PyValue], open: &str, close: &str, out: &mut String) {
    out.push_str(open);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        item.write_repr(out);
    }
    out.push_str(close);
}

/// Characters Python's `str.isprintable()` rejects (approximation, see the module doc).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if needs_escape(c) => {
                let code = c as u32;
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else if code < 0x10000 {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn write_bytes_repr(b: &[u8], out: &mut String) {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    out.push('b');
    out.push(quote);
    for &byte in b {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ if byte as char == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\x{byte:02x}");
            }
        }
    }
    out.push(quote);
}

/// Nesting limit: Python raises RecursionError/MemoryError long before this matters for
/// answers; the limit keeps hostile input from overflowing our stack.
const MAX_DEPTH: usize = 200;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &str) -> LiteralError {
        LiteralError {
            pos: self.pos,
            reason: reason.to_owned(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Whitespace (newlines included: answers are one expression) and `#` comments.
    fn skip_ws(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() || c == '\x0c' => self.pos += c.len_utf8(),
                Some('\\') if self.rest()[1..].starts_with('\n') => self.pos += 2,
                Some('#') => {
                    let end = self
                        .rest()
                        .find('\n')
                        .map_or(self.src.len(), |i| self.pos + i);
                    self.pos = end;
                }
                _ => break,
            }
        }
    }

    fn expr(&mut self) -> Result<PyValue, LiteralError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let value = self.atom();
        self.depth -= 1;
        value
    }

    fn atom(&mut self) -> Result<PyValue, LiteralError> {
        self.skip_ws();
        let Some(c) = self.peek() else {
            return Err(self.err("unexpected end of input"));
        };
        match c {
            '[' => {
                self.pos += 1;
                Ok(PyValue::List(self.items(']')?))
            }
            '(' => {
                self.pos += 1;
                self.skip_ws();
                if self.eat(')') {
                    return Ok(PyValue::Tuple(Vec::new()));
                }
                let first = self.expr()?;
                self.skip_ws();
                if self.eat(')') {
                    return Ok(first); // parenthesised expression, not a tuple
                }
                if !self.eat(',') {
                    return Err(self.err("expected `,` or `)`"));
                }
                let mut items = vec![first];
                items.extend(self.items(')')?);
                Ok(PyValue::Tuple(items))
            }
            '{' => {
                self.pos += 1;
                self.brace()
            }
            '+' | '-' => {
                self.pos += 1;
                self.skip_ws();
                match self.number()? {
                    PyValue::Int(d) if c == '-' => {
                        Ok(PyValue::Int(if d == "0" { d } else { format!("-{d}") }))
                    }
                    PyValue::Float(f) if c == '-' => Ok(PyValue::Float(-f)),
                    v => Ok(v),
                }
            }
            '0'..='9' | '.' => self.number(),
            c if c.is_alphabetic() || c == '_' || c == '"' || c == '\'' => self.name_or_string(),
            _ => Err(self.err("unexpected character")),
        }
    }

    /// Comma-separated expressions up to `close` (trailing comma allowed).
    fn items(&mut self, close: char) -> Result<Vec<PyValue>, LiteralError> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.expr()?);
            self.skip_ws();
            if self.eat(close) {
                return Ok(items);
            }
            if !self.eat(',') {
                return Err(self.err(&format!("expected `,` or `{close}`")));
            }
        }
    }

    fn brace(&mut self) -> Result<PyValue, LiteralError> {
        self.skip_ws();
        if self.eat('}') {
            return Ok(PyValue::Dict(Vec::new()));
        }
        let first = self.expr()?;
        self.skip_ws();
        if self.eat(':') {
            let value = self.expr()?;
            let mut pairs = vec![(first, value)];
            loop {
                self.skip_ws();
                if self.eat('}') {
                    return Ok(PyValue::Dict(pairs));
                }
                if !self.eat(',') {
                    return Err(self.err("expected `,` or `}`"));
                }
                self.skip_ws();
                if self.eat('}') {
                    return Ok(PyValue::Dict(pairs));
                }
                let k = self.expr()?;
                self.skip_ws();
                if !self.eat(':') {
                    return Err(self.err("expected `:` in dict"));
                }
                let v = self.expr()?;
                pairs.push((k, v));
            }
        }
        let mut items = vec![first];
        if self.eat('}') {
            return Ok(PyValue::Set(items));
        }
        if !self.eat(',') {
            return Err(self.err("expected `,`, `:` or `}`"));
        }
        items.extend(self.items('}')?);
        Ok(PyValue::Set(items))
    }

    fn number(&mut self) -> Result<PyValue, LiteralError> {
        let start = self.pos;
        let rest = self.rest();
        let bytes = rest.as_bytes();
        // Prefixed integers: 0x.., 0o.., 0b..
        if bytes.len() > 1 && bytes[0] == b'0' && matches!(bytes[1] | 0x20, b'x' | b'o' | b'b') {
            let radix = match bytes[1] | 0x20 {
                b'x' => 16,
                b'o' => 8,
                _ => 2,
            };
            let mut i = 2;
            let mut text = String::new();
            while i < bytes.len() {
                let ch = bytes[i] as char;
                if ch == '_' && i + 1 < bytes.len() && (bytes[i + 1] as char).is_digit(radix) {
                    i += 1;
                    continue;
                }
                if !ch.is_digit(radix) {
                    break;
                }
                text.push(ch);
                i += 1;
            }
            if text.is_empty() {
                return Err(self.err("invalid integer literal"));
            }
            self.pos += i;
            self.no_ident_after()?;
            return u128::from_str_radix(&text, radix)
                .map(|v| PyValue::Int(v.to_string()))
                .map_err(|_| self.err("integer literal too large"));
        }
        let mut i = 0;
        let mut is_float = false;
        while i < bytes.len() {
            match bytes[i] {
                b'0'..=b'9' | b'_' => i += 1,
                b'.' if !is_float => {
                    is_float = true;
                    i += 1;
                }
                b'e' | b'E' => {
                    let mut j = i + 1;
                    if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                        j += 1;
                    }
                    if j < bytes.len() && bytes[j].is_ascii_digit() {
                        is_float = true;
                        i = j;
                        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                            i += 1;
                        }
                    }
                    break;
                }
                _ => break,
            }
        }
        let text = &rest[..i];
        if i < bytes.len() && (bytes[i] == b'j' || bytes[i] == b'J') {
            return Err(self.err("complex numbers are not supported"));
        }
        self.pos += i;
        self.no_ident_after()?;
        if is_float {
            if !valid_decimal_float(text) {
                self.pos = start;
                return Err(self.err("invalid float literal"));
            }
            return Ok(PyValue::Float(text.replace('_', "").parse().map_err(
                |_| LiteralError {
                    pos: start,
                    reason: "invalid float literal".into(),
                },
            )?));
        }
        if text.is_empty() || text.starts_with('_') || text.ends_with('_') || text.contains("__") {
            self.pos = start;
            return Err(self.err("invalid integer literal"));
        }
        let digits = text.replace('_', "");
        if digits.len() > 1 && digits.starts_with('0') {
            if digits.bytes().all(|b| b == b'0') {
                return Ok(PyValue::Int("0".into()));
            }
            self.pos = start;
            return Err(self.err("leading zeros in a decimal integer"));
        }
        Ok(PyValue::Int(digits))
    }

    fn no_ident_after(&self) -> Result<(), LiteralError> {
        match self.peek() {
            Some(c) if c.is_alphanumeric() || c == '_' => Err(self.err("invalid number literal")),
            _ => Ok(()),
        }
    }

    fn name_or_string(&mut self) -> Result<PyValue, LiteralError> {
        let rest = self.rest();
        let ident_len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(rest.len(), |(i, _)| i);
        let ident = &rest[..ident_len];
        let next = rest[ident_len..].chars().next();
        if matches!(next, Some('"' | '\'')) && ident.len() <= 2 {
            let lower = ident.to_ascii_lowercase();
            if matches!(lower.as_str(), "" | "r" | "u" | "b" | "br" | "rb") {
                return self.strings();
            }
            if lower.contains('f') {
                return Err(self.err("f-strings are not literals"));
            }
        }
        if ident.is_empty() {
            return self.strings();
        }
        self.pos += ident_len;
        if ident == "set" {
            // literal_eval accepts `set()` (Python 3.9+), the only way to write an empty set.
            self.skip_ws();
            if self.eat('(') {
                self.skip_ws();
                if self.eat(')') {
                    return Ok(PyValue::Set(Vec::new()));
                }
            }
        }
        match ident {
            "None" => Ok(PyValue::None),
            "True" => Ok(PyValue::Bool(true)),
            "False" => Ok(PyValue::Bool(false)),
            _ => Err(LiteralError {
                pos: self.pos - ident_len,
                reason: format!("name `{ident}` is not a literal"),
            }),
        }
    }

    /// One or more adjacent string (or bytes) literals, concatenated as Python does.
    fn strings(&mut self) -> Result<PyValue, LiteralError> {
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut kind: Option<bool> = None; // Some(true) = bytes
        loop {
            self.skip_ws();
            let rest = self.rest();
            let prefix_len = rest.find(['"', '\'']).unwrap_or(0);
            let prefix = rest[..prefix_len].to_ascii_lowercase();
            if prefix_len > 2 || !prefix.chars().all(|c| matches!(c, 'r' | 'u' | 'b')) {
                break;
            }
            if !matches!(rest[prefix_len..].chars().next(), Some('"' | '\'')) {
                break;
            }
            let is_bytes = prefix.contains('b');
            let raw = prefix.contains('r');
            if kind.is_some_and(|k| k != is_bytes) {
                return Err(self.err("cannot mix bytes and str literals"));
            }
            kind = Some(is_bytes);
            self.pos += prefix_len;
            let body = self.string_body(raw, is_bytes)?;
            match body {
                Lit::Str(s) => text.push_str(&s),
                Lit::Bytes(b) => bytes.extend(b),
            }
        }
        match kind {
            None => Err(self.err("expected a string literal")),
            Some(true) => Ok(PyValue::Bytes(bytes)),
            Some(false) => Ok(PyValue::Str(text)),
        }
    }

    fn string_body(&mut self, raw: bool, is_bytes: bool) -> Result<Lit, LiteralError> {
        let quote = self.peek().unwrap_or('"');
        let triple: String = std::iter::repeat_n(quote, 3).collect();
        let is_triple = self.rest().starts_with(&triple);
        self.pos += if is_triple { 3 } else { 1 };
        let mut out = String::new();
        let mut out_bytes = Vec::new();
        loop {
            let rest = self.rest();
            let Some(c) = rest.chars().next() else {
                return Err(self.err("unterminated string literal"));
            };
            if is_triple && rest.starts_with(&triple) {
                self.pos += 3;
                break;
            }
            if !is_triple && c == quote {
                self.pos += 1;
                break;
            }
            if !is_triple && c == '\n' {
                return Err(self.err("unterminated string literal"));
            }
            if is_bytes && !c.is_ascii() {
                return Err(self.err("bytes can only contain ASCII literal characters"));
            }
            self.pos += c.len_utf8();
            if c != '\\' {
                push(&mut out, &mut out_bytes, is_bytes, c as u32);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err(self.err("unterminated string literal"));
            };
            self.pos += e.len_utf8();
            if raw {
                // A raw string keeps the backslash; it only stops the quote from ending it.
                push(&mut out, &mut out_bytes, is_bytes, '\\' as u32);
                push(&mut out, &mut out_bytes, is_bytes, e as u32);
                continue;
            }
            let code = match e {
                '\n' => continue,
                '\\' | '\'' | '"' => e as u32,
                'a' => 7,
                'b' => 8,
                'f' => 12,
                'n' => 10,
                'r' => 13,
                't' => 9,
                'v' => 11,
                '0'..='7' => {
                    let mut v = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                v = v * 8 + d;
                                self.pos += 1;
                            }
                            None => break,
                        }
                    }
                    v
                }
                'x' => self.hex_escape(2)?,
                'u' if !is_bytes => self.hex_escape(4)?,
                'U' if !is_bytes => self.hex_escape(8)?,
                'N' if !is_bytes => return Err(self.err("\\N{...} escapes are not supported")),
                other => {
                    // Unknown escapes stay as written (Python only warns).
                    push(&mut out, &mut out_bytes, is_bytes, '\\' as u32);
                    other as u32
                }
            };
            if is_bytes && code > 0xff {
                return Err(self.err("escape out of range for bytes"));
            }
            if !is_bytes && char::from_u32(code).is_none() {
                return Err(self.err("invalid code point in escape"));
            }
            push(&mut out, &mut out_bytes, is_bytes, code);
        }
        Ok(if is_bytes {
            Lit::Bytes(out_bytes)
        } else {
            Lit::Str(out)
        })
    }

    fn hex_escape(&mut self, n: usize) -> Result<u32, LiteralError> {
        let rest = self.rest();
        let hex = rest
            .get(..n)
            .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
        let Some(hex) = hex else {
            return Err(self.err("truncated hex escape"));
        };
        let value = u32::from_str_radix(hex, 16).map_err(|_| self.err("bad hex escape"))?;
        self.pos += n;
        Ok(value)
    }
}

enum Lit {
    Str(String),
    Bytes(Vec<u8>),
}

fn push(out: &mut String, out_bytes: &mut Vec<u8>, is_bytes: bool, code: u32) {
    if is_bytes {
        out_bytes.push(code as u8);
    } else if let Some(c) = char::from_u32(code) {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &PyValue) -> Vec<String> {
        match v {
            PyValue::List(items) => items.iter().map(PyValue::to_py_str).collect(),
            _ => panic!("not a list: {v:?}"),
        }
    }

    #[test]
    fn lists_of_strings_and_numbers() {
        let v = literal_eval("['CST3', \"FTL\", 3, 2.50, -1e-05, None, True]").unwrap();
        assert_eq!(
            strs(&v),
            ["CST3", "FTL", "3", "2.5", "-1e-05", "None", "True"]
        );
    }

    #[test]
    fn nested_lists_print_like_python() {
        let v =
            literal_eval("[['mean_fare', '34.65'], ('a', 1), ('b',), (), {1: 'x'}, {2}, set()]")
                .unwrap();
        assert_eq!(
            strs(&v),
            [
                "['mean_fare', '34.65']",
                "('a', 1)",
                "('b',)",
                "()",
                "{1: 'x'}",
                "{2}",
                "set()"
            ]
        );
        assert!(literal_eval("set([1])").is_err());
    }

    #[test]
    fn string_quoting_and_escapes_match_python_repr() {
        let v = literal_eval(
            r#"["it's", 'say "hi"', 'both \' and "', 'tab\there', 'a\x41\u00e9', r'raw\n']"#,
        )
        .unwrap();
        let PyValue::List(items) = v else { panic!() };
        let reprs: Vec<String> = items.iter().map(PyValue::repr).collect();
        assert_eq!(
            reprs,
            [
                r#""it's""#,
                r#"'say "hi"'"#,
                r#"'both \' and "'"#,
                r"'tab\there'",
                "'aAé'",
                r"'raw\\n'"
            ]
        );
    }

    #[test]
    fn adjacent_strings_concatenate_and_comments_are_skipped() {
        assert_eq!(
            literal_eval("'ab' \"cd\"  # note").unwrap(),
            PyValue::Str("abcd".into())
        );
        assert_eq!(
            literal_eval("'''multi\nline'''").unwrap(),
            PyValue::Str("multi\nline".into())
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(literal_eval("0x1F").unwrap(), PyValue::Int("31".into()));
        assert_eq!(literal_eval("1_000").unwrap(), PyValue::Int("1000".into()));
        assert_eq!(literal_eval("-0").unwrap(), PyValue::Int("0".into()));
        assert_eq!(literal_eval("5.").unwrap(), PyValue::Float(5.0));
        assert_eq!(literal_eval(".5e1").unwrap(), PyValue::Float(5.0));
        assert!(literal_eval("007").is_err());
        assert!(literal_eval("1j").is_err());
        assert!(literal_eval("1__0").is_err());
    }

    #[test]
    fn top_level_tuple_and_rejections() {
        assert_eq!(
            literal_eval("1, 'a'").unwrap(),
            PyValue::Tuple(vec![PyValue::Int("1".into()), PyValue::Str("a".into())])
        );
        for bad in [
            "",
            "[1, 2",
            "foo",
            "[1] [2]",
            "f'x'",
            "1 + 2",
            "--1",
            "[1,,2]",
            "'unterminated",
        ] {
            assert!(literal_eval(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(literal_eval(&deep).is_err());
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.57, "1.57"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (100.0, "100.0"),
            (1.2345678901234567e300, "1.2345678901234567e+300"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn py_float_matches_python_float() {
        for (text, want) in [
            (" 1.5\n", Some(1.5)),
            ("-.5", Some(-0.5)),
            ("+5.", Some(5.0)),
            ("1e3", Some(1000.0)),
            ("1_000.5", Some(1000.5)),
            ("Infinity", Some(f64::INFINITY)),
            ("-inf", Some(f64::NEG_INFINITY)),
        ] {
            assert_eq!(py_float(text), want, "{text:?}");
        }
        assert!(py_float("nan").unwrap().is_nan());
        for bad in [
            "", "34.65%", "1_", "_1", "1__0", "e5", ".", "1e", "0x10", "1.2.3", "infinit", "1 2",
        ] {
            assert_eq!(py_float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\u{1c} x \u{3000}\n"), "x");
    }
}
