//! What a node sends back is shown to the operator only after it is made harmless, and what the
//! operator's mesh file holds is shown only without its keys.
//!
//! A compromised node controls its stderr, the files fleet commands fetch from it and the JSON
//! its ikectl prints: terminal escape sequences in them could rewrite the operator's screen,
//! retitle the window or, on some terminals, answer back with input. Control characters other
//! than newline and tab are therefore shown as visible `\xNN` escapes. `[[manual_sa]]` keys are
//! secrets: diffs, plans and JSON show that a key line changed, never the key.

use serde_json::Value;

/// What replaces a key's value.
pub const REDACTED: &str = "\"<redacted>\"";

/// `text` with every control character except newline and tab (C0, DEL and C1, ESC included)
/// written as a visible `\xNN` escape.
pub fn strip_controls(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => clean.push(c),
            c if c.is_control() => clean.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => clean.push(c),
        }
    }
    clean
}

/// Every string in a node's JSON, keys included, through [`strip_controls`] (JSON escapes such
/// as `\u001b` decode to the raw character).
pub fn strip_controls_in_json(value: &mut Value) {
    match value {
        Value::String(text) => *text = strip_controls(text),
        Value::Array(items) => items.iter_mut().for_each(strip_controls_in_json),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                strip_controls_in_json(&mut item);
                map.insert(strip_controls(&key), item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Mesh-file text (or a unified diff of it) with the value of every `key = ...` line replaced by
/// [`REDACTED`]; diff markers and indentation stay, so a changed key still shows as changed.
pub fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&redact_line(line));
    }
    out
}

fn redact_line(line: &str) -> String {
    // A diff line starts with '+', '-' or ' '; the header lines ("+++ n1: new") have no '='.
    let body_start = usize::from(line.starts_with(['+', '-', ' ']));
    let (marker, body) = line.split_at(body_start);
    let indent = body.len() - body.trim_start().len();
    let Some(rest) = body[indent..].strip_prefix("key") else { return line.to_string() };
    let Some(value) = rest.trim_start().strip_prefix('=') else { return line.to_string() };
    let newline = if value.ends_with('\n') { "\n" } else { "" };
    let spacing = &rest[..rest.len() - rest.trim_start().len()];
    format!("{marker}{}key{spacing}= {REDACTED}{newline}", &body[..indent])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223";

    #[test]
    fn terminal_escapes_from_a_node_become_visible_text() {
        let hostile = "meshd: bad\x1b]0;owned\x07 \x1b[2J\r\u{9b}line\u{7f}\nnext\tcolumn";
        let clean = strip_controls(hostile);
        assert_eq!(clean, "meshd: bad\\x1b]0;owned\\x07 \\x1b[2J\\x0d\\x9bline\\x7f\nnext\tcolumn");
        assert!(!clean.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
    }

    #[test]
    fn json_strings_and_keys_are_cleaned() {
        let mut value: Value =
            serde_json::from_str(r#"{"name\u001b[31m": ["n2\u001b]0;x\u0007", 3, {"k": "\u009b"}]}"#).unwrap();
        strip_controls_in_json(&mut value);
        assert_eq!(value.to_string(), r#"{"name\\x1b[31m":["n2\\x1b]0;x\\x07",3,{"k":"\\x9b"}]}"#);
    }

    #[test]
    fn key_lines_are_redacted_in_files_and_diffs() {
        let file = format!("[[manual_sa]]\nfrom = \"n1\"\nkey = \"{KEY}\"\n  key   =   \"{KEY}\"\nkeyring = 1\n");
        let redacted = redact_keys(&file);
        assert!(!redacted.contains(KEY), "{redacted}");
        assert_eq!(
            redacted,
            "[[manual_sa]]\nfrom = \"n1\"\nkey = \"<redacted>\"\n  key   = \"<redacted>\"\nkeyring = 1\n"
        );
        let diff =
            format!("--- n1: current\n+++ n1: new\n@@ -1,2 +1,2 @@\n-key = \"{KEY}\"\n+key = \"ff{KEY}\"\n spi = 1\n");
        let redacted = redact_keys(&diff);
        assert!(!redacted.contains(KEY), "{redacted}");
        assert!(redacted.contains("-key = \"<redacted>\"\n+key = \"<redacted>\"\n spi = 1\n"), "{redacted}");
        assert!(redacted.starts_with("--- n1: current\n+++ n1: new\n"));
    }
}
