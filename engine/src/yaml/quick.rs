//! A reader of the plain shape of pipeline files, straight from the bytes: block mappings
//! and sequences, flow mappings and sequences (over several lines too), plain scalars on one
//! line, quoted scalars on one line, comments. Everything else (block scalars, multi-line
//! scalars, anchors, aliases, tags, merge keys, complex keys, empty values, document
//! markers and directives, tabs, carriage returns, scalars whose meaning is in doubt, and
//! every syntax error) returns `None` and goes to [`super::parse_plain`] and serde-saphyr,
//! whose answer stays the reference: where this reader answers, the tree and its locations
//! are the ones serde-saphyr gives (the tests compare the two on samples, on mutations of
//! them, on the fuzz corpus and on the pipelines). It is here because the YAML parser's
//! scanner was most of what compiling a large pipeline cost.

use super::{Node, YValue, plain_scalar};
use crate::diag::Loc;

/// Longest key this reader takes (serde-saphyr's simple keys stop at 1,024 characters).
const MAX_KEY: usize = 1000;

/// The tree of `text`, or `None` when it is not of the plain shape (see the module).
/// `max_depth` bounds the nesting of containers, `max_scalar_bytes` the bytes of all scalars.
pub(super) fn read(text: &str, max_depth: usize, max_scalar_bytes: usize) -> Option<Node> {
    if !plain_text(text) {
        return None;
    }
    let mut r = Reader {
        text,
        s: text.as_bytes(),
        pos: 0,
        line: 1,
        line_start: 0,
        depth: 0,
        max_depth,
        scalar_bytes: 0,
    };
    let indent = r.next_content()?;
    let root = r.node_at_line(indent, -1)?;
    if r.next_content().is_some() || r.scalar_bytes > max_scalar_bytes {
        return None;
    }
    Some(root)
}

/// Only printable characters, `\n` line breaks and no document markers or directives.
fn plain_text(text: &str) -> bool {
    let s = text.as_bytes();
    let ascii_ok = s.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b));
    let chars_ok = ascii_ok
        || text.chars().all(|c| match c {
            '\n' => true,
            c if c.is_ascii() => (' '..='~').contains(&c),
            // C1 controls, NEL, the Unicode line and paragraph separators, the byte order
            // mark and the non-characters are left to the full parser.
            '\u{80}'..='\u{a0}' | '\u{2028}' | '\u{2029}' | '\u{feff}' => false,
            '\u{fffe}' | '\u{ffff}' => false,
            _ => true,
        });
    chars_ok
        && s.split(|&b| b == b'\n').all(|line| {
            !(line.starts_with(b"---") || line.starts_with(b"...") || line.starts_with(b"%"))
        })
}

struct Reader<'a> {
    text: &'a str,
    s: &'a [u8],
    pos: usize,
    /// The line of `pos`, 1-based, and where that line starts.
    line: u32,
    line_start: usize,
    /// Containers open now.
    depth: usize,
    max_depth: usize,
    scalar_bytes: usize,
}

/// A plain scalar ends at these in a flow collection.
fn flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, at: usize) -> Option<u8> {
        self.s.get(at).copied()
    }

    fn at_eol(&self) -> bool {
        matches!(self.peek(), None | Some(b'\n'))
    }

    /// Whether the byte at `at` is a space, a line break or the end.
    fn blank_at(&self, at: usize) -> bool {
        matches!(self.peek_at(at), None | Some(b' ' | b'\n'))
    }

    fn loc(&self, at: usize) -> Loc {
        let before = &self.text[self.line_start..at];
        let column = if before.is_ascii() {
            before.len()
        } else {
            before.chars().count()
        };
        Loc {
            line: self.line,
            column: column as u32 + 1,
        }
    }

    fn newline(&mut self) {
        self.pos += 1;
        self.line += 1;
        self.line_start = self.pos;
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// From the start of a line: past blank and comment lines to the next line with
    /// content, whose indentation it returns (`pos` at that line's start); `None` at the end.
    fn next_content(&mut self) -> Option<usize> {
        loop {
            let start = self.pos;
            self.skip_spaces();
            match self.peek() {
                None => return None,
                Some(b'\n') => self.newline(),
                Some(b'#') => {
                    self.skip_to_eol();
                    self.peek()?;
                    self.newline();
                }
                Some(_) => {
                    let indent = self.pos - start;
                    self.pos = start;
                    return Some(indent);
                }
            }
        }
    }

    fn skip_to_eol(&mut self) {
        while !self.at_eol() {
            self.pos += 1;
        }
    }

    /// After a value in a block: spaces, an optional comment, the line break.
    fn end_line(&mut self) -> Option<()> {
        let before = self.pos;
        self.skip_spaces();
        if self.peek() == Some(b'#') && self.pos > before {
            self.skip_to_eol();
        }
        match self.peek() {
            None => Some(()),
            Some(b'\n') => {
                self.newline();
                Some(())
            }
            Some(_) => None,
        }
    }

    fn open(&mut self) -> Option<()> {
        if self.depth >= self.max_depth {
            return None;
        }
        self.depth += 1;
        Some(())
    }

    /// The block node whose line starts at `pos` with `indent` spaces, inside a block at
    /// `parent` (-1 for the document).
    fn node_at_line(&mut self, indent: usize, parent: isize) -> Option<Node> {
        self.pos += indent;
        if self.peek() == Some(b'-') && self.blank_at(self.pos + 1) {
            self.pos -= indent;
            return self.block_seq(indent);
        }
        self.inline_or_map(indent, parent)
    }

    /// At column `col` of a line: the first key of a block mapping at that indentation, or
    /// a value alone on its line (`parent` is the enclosing block's indentation).
    fn inline_or_map(&mut self, col: usize, parent: isize) -> Option<Node> {
        let start = self.pos;
        let loc = self.loc(start);
        let first = match self.peek()? {
            b'{' | b'[' => {
                let node = self.flow(parent)?;
                self.skip_spaces();
                if self.peek() == Some(b':') {
                    return None;
                }
                self.end_line()?;
                return Some(node);
            }
            b'\'' | b'"' => self.quoted()?,
            _ => self.plain(false)?,
        };
        if self.peek() == Some(b':') && self.blank_at(self.pos + 1) {
            if self.pos - start > MAX_KEY {
                return None;
            }
            self.pos += 1;
            return self.block_map(col, loc, first);
        }
        self.end_line()?;
        Some(first)
    }

    /// A block mapping at indentation `indent` whose first key was just read (`pos` after
    /// its colon).
    fn block_map(&mut self, indent: usize, loc: Loc, first: Node) -> Option<Node> {
        self.open()?;
        let mut entries = Vec::new();
        let mut key = check_key(first)?;
        loop {
            let value = self.map_value(indent)?;
            entries.push((key, value));
            match self.next_content() {
                Some(i) if i == indent => {}
                Some(i) if i < indent => break,
                None => break,
                Some(_) => return None,
            }
            self.pos += indent;
            if self.peek() == Some(b'-') && self.blank_at(self.pos + 1) {
                return None;
            }
            let start = self.pos;
            let k = match self.peek()? {
                b'\'' | b'"' => self.quoted()?,
                b'{' | b'[' => return None,
                _ => self.plain(false)?,
            };
            if self.peek() != Some(b':') || !self.blank_at(self.pos + 1) {
                return None;
            }
            if self.pos - start > MAX_KEY {
                return None;
            }
            self.pos += 1;
            key = check_key(k)?;
        }
        self.depth -= 1;
        Some(Node {
            loc,
            value: YValue::Map(entries),
        })
    }

    /// The value after a block mapping key's colon: on the same line, or below it (more
    /// indented, or a sequence at the key's own indentation).
    fn map_value(&mut self, indent: usize) -> Option<Node> {
        let before = self.pos;
        self.skip_spaces();
        let comment = self.peek() == Some(b'#') && self.pos > before;
        if self.at_eol() || comment {
            self.end_line()?;
            let next = self.next_content()?;
            if next > indent {
                return self.node_at_line(next, indent as isize);
            }
            if next == indent
                && self.peek_at(self.pos + indent) == Some(b'-')
                && self.blank_at(self.pos + indent + 1)
            {
                // A sequence at the key's own indentation starts, for serde-saphyr, where
                // its first item does; one whose first item is not on the dash's line is
                // left to it.
                let mut after = self.pos + indent + 1;
                while self.peek_at(after) == Some(b' ') {
                    after += 1;
                }
                if matches!(self.peek_at(after), None | Some(b'\n' | b'#')) {
                    return None;
                }
                let mut seq = self.block_seq(indent)?;
                if let YValue::Seq(items) = &seq.value {
                    seq.loc = items.first()?.loc.clone();
                }
                return Some(seq);
            }
            // An empty value: null, resolved by the full parser.
            return None;
        }
        let node = self.inline_value(indent as isize)?;
        self.end_line()?;
        Some(node)
    }

    /// A value that starts on the current line after a key or a sequence's dash.
    fn inline_value(&mut self, parent: isize) -> Option<Node> {
        match self.peek()? {
            b'{' | b'[' => self.flow(parent),
            b'\'' | b'"' => self.quoted(),
            _ => {
                let node = self.plain(false)?;
                // `a: b: c` is not YAML.
                if self.peek() == Some(b':') {
                    return None;
                }
                Some(node)
            }
        }
    }

    /// A block sequence at indentation `indent`, `pos` at the start of its first line.
    fn block_seq(&mut self, indent: usize) -> Option<Node> {
        self.open()?;
        let loc = self.loc(self.pos + indent);
        let mut items = Vec::new();
        loop {
            self.pos += indent + 1;
            let before = self.pos;
            self.skip_spaces();
            let comment = self.peek() == Some(b'#') && self.pos > before;
            let item = if self.at_eol() || comment {
                self.end_line()?;
                let next = self.next_content()?;
                if next <= indent {
                    return None;
                }
                self.node_at_line(next, indent as isize)?
            } else if self.peek() == Some(b'-') && self.blank_at(self.pos + 1) {
                return None;
            } else {
                let col = self.pos - self.line_start;
                self.inline_or_map(col, indent as isize)?
            };
            items.push(item);
            match self.next_content() {
                Some(i) if i == indent => {
                    let dash = self.pos + indent;
                    if !(self.peek_at(dash) == Some(b'-') && self.blank_at(dash + 1)) {
                        break;
                    }
                }
                Some(i) if i < indent => break,
                None => break,
                Some(_) => return None,
            }
        }
        self.depth -= 1;
        Some(Node {
            loc,
            value: YValue::Seq(items),
        })
    }

    /// A plain scalar on one line; in a flow collection it also ends at flow indicators.
    fn plain(&mut self, flow: bool) -> Option<Node> {
        let start = self.pos;
        let first = self.peek()?;
        let indicator = matches!(
            first,
            b'-' | b'?'
                | b':'
                | b','
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'#'
                | b'&'
                | b'*'
                | b'!'
                | b'|'
                | b'>'
                | b'\''
                | b'"'
                | b'%'
                | b'@'
                | b'`'
        );
        if indicator {
            // `-1` and `-x` are plain scalars; `- x`, `?`, `:` and the rest start
            // something else.
            let next = self.peek_at(start + 1);
            let plain_dash = first == b'-'
                && next.is_some_and(|b| b != b' ' && b != b'\n' && !(flow && flow_indicator(b)));
            if !plain_dash {
                return None;
            }
        }
        let mut end = start;
        while let Some(b) = self.peek() {
            match b {
                b'\n' => break,
                b':' => {
                    let next = self.peek_at(self.pos + 1);
                    if matches!(next, None | Some(b' ' | b'\n'))
                        || (flow && next.is_some_and(flow_indicator))
                    {
                        break;
                    }
                }
                b' ' => {
                    if self.peek_at(self.pos + 1) == Some(b'#') {
                        break;
                    }
                    self.pos += 1;
                    continue;
                }
                b if flow && flow_indicator(b) => break,
                _ => {}
            }
            self.pos += 1;
            end = self.pos;
        }
        let value = &self.text[start..end];
        self.scalar_bytes += value.len();
        let loc = self.loc(start);
        // Trailing spaces before a colon, a comment or the end of the line are not part of
        // the scalar; `pos` stays after them.
        Some(Node {
            loc,
            value: plain_scalar(value)?,
        })
    }

    /// A single- or double-quoted scalar on one line.
    fn quoted(&mut self) -> Option<Node> {
        let start = self.pos;
        let quote = self.peek()?;
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            let b = self.peek()?;
            match b {
                b'\n' => return None,
                b'\'' if quote == b'\'' => {
                    out.push_str(&self.text[run..self.pos]);
                    if self.peek_at(self.pos + 1) == Some(b'\'') {
                        out.push('\'');
                        self.pos += 2;
                        run = self.pos;
                        continue;
                    }
                    self.pos += 1;
                    break;
                }
                b'"' if quote == b'"' => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    break;
                }
                b'\\' if quote == b'"' => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    out.push(self.escape()?);
                    run = self.pos;
                }
                _ => self.pos += 1,
            }
        }
        self.scalar_bytes += out.len();
        Some(Node {
            loc: self.loc(start),
            value: YValue::Str(out),
        })
    }

    /// The character a double-quoted escape stands for (`pos` after the backslash).
    fn escape(&mut self) -> Option<char> {
        let c = match self.peek()? {
            b'0' => '\0',
            b'a' => '\u{7}',
            b'b' => '\u{8}',
            b't' => '\t',
            b'n' => '\n',
            b'v' => '\u{b}',
            b'f' => '\u{c}',
            b'r' => '\r',
            b'e' => '\u{1b}',
            b' ' => ' ',
            b'"' => '"',
            b'/' => '/',
            b'\\' => '\\',
            b'N' => '\u{85}',
            b'_' => '\u{a0}',
            b'L' => '\u{2028}',
            b'P' => '\u{2029}',
            b'x' | b'u' | b'U' => {
                let digits = match self.peek()? {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let hex = self.text.get(self.pos + 1..self.pos + 1 + digits)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                self.pos += digits;
                char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
            }
            _ => return None,
        };
        self.pos += 1;
        Some(c)
    }

    /// Spaces, line breaks and comments inside a flow collection. A line that goes on must
    /// be indented more than the block around the collection (`parent`).
    fn flow_space(&mut self, parent: isize) -> Option<()> {
        loop {
            match self.peek()? {
                b' ' => self.pos += 1,
                b'\n' => {
                    self.newline();
                    let indent = self.next_content()?;
                    if indent as isize <= parent {
                        return None;
                    }
                    self.pos += indent;
                }
                b'#' if self.pos == self.line_start
                    || matches!(self.s[self.pos - 1], b' ' | b'\n') =>
                {
                    self.skip_to_eol()
                }
                _ => return Some(()),
            }
        }
    }

    /// A flow mapping or sequence (`pos` at its bracket).
    fn flow(&mut self, parent: isize) -> Option<Node> {
        self.open()?;
        let loc = self.loc(self.pos);
        let map = self.peek()? == b'{';
        let close = if map { b'}' } else { b']' };
        self.pos += 1;
        self.flow_space(parent)?;
        let mut items = Vec::new();
        let mut entries = Vec::new();
        if self.peek()? == close {
            self.pos += 1;
        } else {
            loop {
                if map {
                    let key = match self.peek()? {
                        b'\'' | b'"' => self.quoted()?,
                        _ => self.plain(true)?,
                    };
                    let key = check_key(key)?;
                    if self.peek() != Some(b':') || !self.blank_at(self.pos + 1) {
                        return None;
                    }
                    self.pos += 1;
                    self.flow_space(parent)?;
                    let value = self.flow_value(parent)?;
                    entries.push((key, value));
                } else {
                    let item = self.flow_value(parent)?;
                    self.skip_spaces();
                    if self.peek() == Some(b':') {
                        return None;
                    }
                    items.push(item);
                }
                self.flow_space(parent)?;
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.flow_space(parent)?;
                        // A trailing comma is left to the full parser.
                        if matches!(self.peek()?, b'}' | b']' | b',') {
                            return None;
                        }
                    }
                    b if b == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        let value = if map {
            YValue::Map(entries)
        } else {
            YValue::Seq(items)
        };
        Some(Node { loc, value })
    }

    /// A value inside a flow collection.
    fn flow_value(&mut self, parent: isize) -> Option<Node> {
        match self.peek()? {
            b'{' | b'[' => self.flow(parent),
            b'\'' | b'"' => self.quoted(),
            _ => self.plain(true),
        }
    }
}

/// Keys are strings other than `<<` (a merge, left to the full parser).
fn check_key(key: Node) -> Option<Node> {
    match &key.value {
        YValue::Str(k) if k != "<<" => Some(key),
        _ => None,
    }
}
