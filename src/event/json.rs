//! Byte-level helpers over JSON text that serde does not offer: a nesting
//! depth check that runs before parsing (so a depth bomb never reaches the
//! recursive parser) and a compact copy that strips insignificant
//! whitespace (so stored events are always single NDJSON lines).

/// Where the nesting limit was first exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// For a top-level array, the index of the element that is too deep.
    pub element: Option<usize>,
}

/// Checks that no value nests deeper than `limit` levels. With
/// `top_level_array`, the outer array does not count and the offending
/// element's index is reported. Invalid JSON passes: the parser reports it.
pub fn check_depth(text: &[u8], limit: usize, top_level_array: bool) -> Result<(), TooDeep> {
    let limit = if top_level_array { limit + 1 } else { limit };
    let mut depth = 0usize;
    let mut element = 0usize;
    let mut at = 0;
    while at < text.len() {
        match text[at] {
            b'"' => {
                at = string_end(text, at + 1);
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep {
                        element: top_level_array.then_some(element),
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if top_level_array && depth == 1 => element += 1,
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// Appends `text` (valid JSON) to `out` without whitespace outside strings.
pub fn push_compact(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    let mut run_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => at = string_end(bytes, at + 1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&text[run_start..at]);
                at += 1;
                run_start = at;
            }
            _ => at += 1,
        }
    }
    out.push_str(&text[run_start..]);
}

/// Just past the string whose contents start at `from` (after its opening
/// quote), or the end of `text` when it is not closed. Bodies are mostly
/// string contents: they are skipped a vector at a time, not byte by byte.
fn string_end(text: &[u8], mut from: usize) -> usize {
    while let Some(found) = memchr::memchr2(b'"', b'\\', &text[from..]) {
        let at = from + found;
        if text[at] == b'"' {
            return at + 1;
        }
        // An escape: the byte after the backslash is never the end.
        from = (at + 2).min(text.len());
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_objects_and_arrays_outside_strings() {
        assert!(check_depth(br#"{"a":{"b":[1]}}"#, 3, false).is_ok());
        assert!(check_depth(br#"{"a":{"b":[1]}}"#, 2, false).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[\"{{{{"}"#, 1, false).is_ok());
        let bomb = "[".repeat(100_000);
        assert!(check_depth(bomb.as_bytes(), 64, false).is_err());
        // An escaped backslash does not escape the quote after it.
        assert!(check_depth(br#"{"a":"x\\","b":[[1]]}"#, 2, false).is_err());
        assert!(check_depth(br#"{"a":"x\\","b":[[1]]}"#, 3, false).is_ok());
        // Unterminated strings, a backslash last: no panic, nothing counted.
        for text in [&b"\"abc\\"[..], b"[\"[[[", b"\"\\\\\\"] {
            assert!(check_depth(text, 1, false).is_ok());
        }
    }

    #[test]
    fn depth_in_an_array_names_the_element() {
        let body = br#"[{"a":1},{"b":{"c":{}}},{"d":2}]"#;
        assert!(check_depth(body, 3, true).is_ok());
        assert_eq!(
            check_depth(body, 2, true),
            Err(TooDeep { element: Some(1) })
        );
    }

    #[test]
    fn compact_strips_whitespace_but_not_inside_strings() {
        let mut out = String::new();
        push_compact(
            "{ \"a b\" :\n [ 1 ,\t2 ],\r\n \"c\\\" d\": \" x \" }",
            &mut out,
        );
        assert_eq!(out, r#"{"a b":[1,2],"c\" d":" x "}"#);
        let mut out = String::new();
        push_compact(r#"{"already":"compact"}"#, &mut out);
        assert_eq!(out, r#"{"already":"compact"}"#);
        let mut out = String::new();
        push_compact(r#"[ "a\\" , "b c\"" ]"#, &mut out);
        assert_eq!(out, r#"["a\\","b c\""]"#);
    }
}
