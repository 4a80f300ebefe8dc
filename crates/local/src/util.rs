//! Small helpers.

use std::error::Error;

/// An error and its sources, joined: `tcp connect error: Connection
/// refused (os error 111)`.
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    // hyper-util's wrapper ("client error (Connect)") says nothing its source does not.
    if let (true, Some(s)) = (out.starts_with("client error ("), source) {
        out = s.to_string();
        source = s.source();
    }
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Up to `max` characters of `text`, on one line, with `…` when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Constant-time comparison, for tokens.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
