//! Rewrites one canonical event body (compact JSON, as `event::parse`
//! writes it) value by value, copying everything it does not change byte
//! for byte: key order, numbers and untouched strings stay as they were.

/// What to do with the value at a path.
pub enum PathAction {
    Keep,
    /// Replace the whole value with this JSON string.
    Mask(String),
    Drop,
}

/// The callbacks a rewrite asks: what to do at a path (a JSON pointer),
/// and what a string value becomes (None: unchanged).
pub trait Visitor {
    fn at_path(&mut self, pointer: &str) -> PathAction;
    fn string(&mut self, pointer: &str, value: &str) -> Option<String>;
}

/// The rewritten body, or None when nothing changed.
pub fn rewrite(body: &str, visitor: &mut dyn Visitor) -> Option<String> {
    let mut rewrite = Rewrite {
        body,
        visitor,
        out: String::with_capacity(body.len() + 64),
        pointer: String::new(),
        changed: false,
    };
    let end = rewrite.value(0);
    debug_assert_eq!(end, body.len());
    rewrite.changed.then_some(rewrite.out)
}

struct Rewrite<'a> {
    body: &'a str,
    visitor: &'a mut dyn Visitor,
    out: String,
    /// The JSON pointer of the value being rewritten.
    pointer: String,
    changed: bool,
}

impl Rewrite<'_> {
    /// Copies or rewrites the value starting at `at`; returns where it ends.
    fn value(&mut self, at: usize) -> usize {
        let bytes = self.body.as_bytes();
        match bytes[at] {
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.out.push(open as char);
                let mut pos = at + 1;
                let mut index = 0usize;
                let mut first = true;
                while bytes[pos] != close {
                    if bytes[pos] == b',' {
                        pos += 1;
                    }
                    let depth = self.pointer.len();
                    let (prefix, value_at) = if open == b'{' {
                        let key_end = string_end(bytes, pos);
                        let key_raw = &self.body[pos..key_end];
                        let key: String = serde_json::from_str(key_raw).unwrap_or_default();
                        push_token(&mut self.pointer, &key);
                        (&self.body[pos..key_end + 1], key_end + 1) // `"key":`
                    } else {
                        push_token(&mut self.pointer, &index.to_string());
                        ("", pos)
                    };
                    let value_end = skip(bytes, value_at);
                    self.member(prefix, value_at, &mut first);
                    self.pointer.truncate(depth);
                    index += 1;
                    pos = value_end;
                }
                self.out.push(close as char);
                pos + 1
            }
            b'"' => {
                let end = string_end(bytes, at);
                let raw = &self.body[at..end];
                let decoded: Option<std::borrow::Cow<str>> = if raw.contains('\\') {
                    serde_json::from_str::<String>(raw).ok().map(Into::into)
                } else {
                    Some(raw[1..raw.len() - 1].into())
                };
                match decoded.and_then(|text| self.visitor.string(&self.pointer, &text)) {
                    Some(new) => {
                        self.changed = true;
                        self.out.push_str(
                            &serde_json::to_string(&new).unwrap_or_else(|_| raw.to_owned()),
                        );
                    }
                    None => self.out.push_str(raw),
                }
                end
            }
            _ => {
                let end = skip(bytes, at);
                self.out.push_str(&self.body[at..end]);
                end
            }
        }
    }

    /// One object member (`prefix` is its `"key":`) or array element, at
    /// `self.pointer`: dropped, masked, or rewritten value by value.
    fn member(&mut self, prefix: &str, value_at: usize, first: &mut bool) {
        let action = self.visitor.at_path(&self.pointer);
        if matches!(action, PathAction::Drop) {
            self.changed = true;
            return;
        }
        if !*first {
            self.out.push(',');
        }
        *first = false;
        self.out.push_str(prefix);
        match action {
            PathAction::Mask(mask) => {
                self.changed = true;
                self.out.push_str(&mask);
            }
            _ => {
                self.value(value_at);
            }
        }
    }
}

/// JSON pointer escaping (RFC 6901).
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// The index just past the string literal starting at `at`.
fn string_end(bytes: &[u8], at: usize) -> usize {
    string_span(bytes, at).0
}

/// The index just past the string starting at `at`, and whether it holds
/// an escape. Jumps from quote or backslash to the next with memchr.
fn string_span(bytes: &[u8], at: usize) -> (usize, bool) {
    let mut pos = at + 1;
    let mut escaped = false;
    loop {
        match memchr::memchr2(b'"', b'\\', &bytes[pos..]) {
            Some(i) if bytes[pos + i] == b'\\' => {
                escaped = true;
                pos += i + 2;
                if pos >= bytes.len() {
                    return (bytes.len(), escaped);
                }
            }
            Some(i) => return (pos + i + 1, escaped),
            // Unterminated (never in the compact JSON outboxd stores).
            None => return (bytes.len(), escaped),
        }
    }
}

/// The index just past the value starting at `at` (compact JSON).
fn skip(bytes: &[u8], at: usize) -> usize {
    match bytes[at] {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut pos = at;
            loop {
                match bytes[pos] {
                    b'"' => {
                        pos = string_end(bytes, pos);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return pos + 1;
                        }
                    }
                    _ => {}
                }
                pos += 1;
            }
        }
        _ => {
            let mut pos = at;
            while pos < bytes.len() && !matches!(bytes[pos], b',' | b'}' | b']') {
                pos += 1;
            }
            pos
        }
    }
}

/// The body with every string's escapes decoded: each string value of the
/// body appears in it as written, so a pattern that finds nothing here
/// finds nothing in any value. Borrowed when there is nothing to decode.
pub fn decoded_view(body: &str) -> std::borrow::Cow<'_, str> {
    if !body.contains('\\') {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = String::with_capacity(body.len());
    let bytes = body.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes[pos] == b'"' {
            let (end, escaped) = string_span(bytes, pos);
            let raw = &body[pos..end];
            // Most strings (keys, ids, short values) hold no escape: copied
            // as they are, not decoded (16 of 17 strings of a typical tool
            // result).
            if !escaped {
                out.push_str(raw);
            } else {
                match serde_json::from_str::<String>(raw) {
                    Ok(text) => {
                        out.push('"');
                        out.push_str(&text);
                        out.push('"');
                    }
                    Err(_) => out.push_str(raw),
                }
            }
            pos = end;
        } else {
            let next = memchr::memchr(b'"', &bytes[pos..]).map_or(body.len(), |i| pos + i);
            out.push_str(&body[pos..next]);
            pos = next;
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper<'a>(&'a [&'a str], &'a [&'a str]);
    impl Visitor for Upper<'_> {
        fn at_path(&mut self, pointer: &str) -> PathAction {
            if self.0.contains(&pointer) {
                PathAction::Drop
            } else if self.1.contains(&pointer) {
                PathAction::Mask("\"[M]\"".into())
            } else {
                PathAction::Keep
            }
        }
        fn string(&mut self, _: &str, value: &str) -> Option<String> {
            value.contains("up").then(|| value.to_uppercase())
        }
    }

    #[test]
    fn rewrites_strings_and_paths_and_copies_the_rest() {
        let body = r#"{"id":"a","n":-1.5e3,"data":{"x":[1,"up\n\"q\"",{"k~/":"up"}],"drop":{"a":[1,2]},"m":null,"t":true,"e":{},"l":[]}}"#;
        let out = rewrite(body, &mut Upper(&["/data/drop", "/data/x/0"], &["/data/m"])).unwrap();
        assert_eq!(
            out,
            r#"{"id":"a","n":-1.5e3,"data":{"x":["UP\n\"Q\"",{"k~/":"UP"}],"m":"[M]","t":true,"e":{},"l":[]}}"#
        );
        let pointer_escaped = rewrite(r#"{"k~/":"x"}"#, &mut Upper(&["/k~0~1"], &[])).unwrap();
        assert_eq!(pointer_escaped, "{}");
        assert_eq!(rewrite(r#"{"a":["x",1]}"#, &mut Upper(&[], &[])), None);
    }

    #[test]
    fn the_decoded_view_shows_strings_as_written() {
        assert_eq!(
            decoded_view(r#"{"a":"x\ny\u0041\/","b":1}"#),
            "{\"a\":\"x\nyA/\",\"b\":1}"
        );
        assert!(matches!(
            decoded_view(r#"{"a":"b"}"#),
            std::borrow::Cow::Borrowed(_)
        ));
        // Strings without an escape beside one with: kept as written.
        assert_eq!(
            decoded_view(r#"{"k\"ey":"v\u00e9","plain":"x y","n":[1,"z"]}"#),
            "{\"k\"ey\":\"v\u{e9}\",\"plain\":\"x y\",\"n\":[1,\"z\"]}"
        );
    }
}
