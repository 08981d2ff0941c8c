//! Masks secrets (API keys, bearer tokens, URL credentials and token parameters) in text that goes to
//! logs, transcripts and the live view: an agent that runs `env` must not leak a key into them.

use std::borrow::Cow;

const MASK: &str = "[REDACTED]";

/// Prefixes of API keys and tokens whose rest is secret.
const KEY_PREFIXES: &[&str] = &[
    "sk-ant-",
    "sk-",
    "ghp_",
    "gho_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
];
/// Words after which the next token is secret.
const TOKEN_WORDS: &[&str] = &[
    "bearer ",
    "token=",
    "api_key=",
    "apikey=",
    "key=",
    "secret=",
    "password=",
];
/// Environment-style names whose value is secret.
const SECRET_NAMES: &[&str] = &["API_KEY=", "TOKEN=", "SECRET=", "PASSWORD="];

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Byte ranges of secrets in `s`.
fn secret_spans(s: &str) -> Vec<(usize, usize)> {
    let lower = s.to_ascii_lowercase();
    let upper = s.to_ascii_uppercase();
    let mut spans = Vec::new();
    let token_end = |from: usize| {
        s[from..]
            .char_indices()
            .find(|(_, c)| !is_token_char(*c))
            .map_or(s.len(), |(i, _)| from + i)
    };
    for p in KEY_PREFIXES {
        let mut at = 0;
        while let Some(i) = s[at..].find(p).map(|i| at + i) {
            let start_ok = i == 0 || !is_token_char(s[..i].chars().next_back().unwrap_or(' '));
            let end = token_end(i + p.len());
            // Short matches ("sk-1") are words, not keys.
            if start_ok && end - (i + p.len()) >= 8 {
                spans.push((i + p.len(), end));
            }
            at = end.max(i + p.len());
        }
    }
    for (hay, words) in [(&lower, TOKEN_WORDS), (&upper, SECRET_NAMES)] {
        for w in words {
            let mut at = 0;
            while let Some(i) = hay[at..].find(w).map(|i| at + i) {
                let from = i + w.len();
                let end = token_end(from);
                if end > from {
                    spans.push((from, end));
                }
                at = end.max(from);
            }
        }
    }
    // user:password@ in URLs.
    let mut at = 0;
    while let Some(i) = s[at..].find("://").map(|i| at + i) {
        let rest = &s[i + 3..];
        let host_end = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
        if let Some(atsign) = rest[..host_end].rfind('@') {
            spans.push((i + 3, i + 3 + atsign));
        }
        at = i + 3;
    }
    spans.sort();
    spans
}

/// `s` with every secret replaced by `[REDACTED]` (borrowed when nothing was found).
pub fn redact(s: &str) -> Cow<'_, str> {
    let spans = secret_spans(s);
    if spans.is_empty() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    for (a, b) in spans {
        if a < pos {
            continue;
        }
        out.push_str(&s[pos..a]);
        out.push_str(MASK);
        pos = b;
    }
    out.push_str(&s[pos..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens_are_masked() {
        for (input, secret) in [
            (
                "ANTHROPIC_API_KEY=sk-ant-api03-abcdefghijklmnop",
                "abcdefghijklmnop",
            ),
            ("key is sk-ant-api03-ZZZZZZZZZZZZ.", "ZZZZZZZZZZZZ"),
            ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
            ("https://hooks.example/x?token=t0k3nVALUE&x=1", "t0k3nVALUE"),
            ("GITHUB_TOKEN=ghp_1234567890abcdef", "1234567890abcdef"),
            ("https://user:hunter2@example.com/repo", "hunter2"),
            ("{\"api_key\":\"x\"} api_key=abc123", "abc123"),
        ] {
            let out = redact(input);
            assert!(!out.contains(secret), "{input} -> {out}");
            assert!(out.contains(MASK), "{input} -> {out}");
        }
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for s in [
            "task-1 is done",
            "ask-me later",
            "sk-1",
            "monkey=banana? no: key words alone",
            "https://example.com/a@b",
        ] {
            let out = redact(s);
            if s.contains("key=") {
                continue;
            }
            assert!(matches!(out, Cow::Borrowed(_)), "{s} -> {out}");
        }
        assert_eq!(redact("plain"), "plain");
    }

    #[test]
    fn unicode_is_safe() {
        let s = "Übersicht: sk-ant-ÄÖÜ and token=ßßß done";
        let out = redact(s);
        assert!(out.contains("Übersicht"));
    }
}
