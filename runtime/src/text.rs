//! Text helpers shared by several parts of the runtime (the sandbox, the rules directory, the
//! outputs), so that none of them imports another for them.

/// `text` with every control character (newlines, carriage returns, escape sequences...) written
/// as a Rust escape such as `\n` or `\u{1b}`.
pub fn escape_controls(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("ok\n2026-11-24T00:00:00Z ERROR forged\r\u{1b}[2J\u{85}é"),
            "ok\\n2026-11-24T00:00:00Z ERROR forged\\r\\u{1b}[2J\\u{85}é"
        );
    }
}
