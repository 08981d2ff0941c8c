//! Markdown (handoffs, reports) to HTML that is safe to show: raw HTML in the source is shown as text,
//! never passed through, and the result is sanitised with ammonia as a second wall.

use pulldown_cmark::{Event, Options, Parser, html};

/// Renders `md` to sanitised HTML. Secrets are masked first.
pub fn render(md: &str) -> String {
    let md = crate::redact::redact(md);
    let parser =
        Parser::new_ext(&md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|ev| {
            match ev {
                // `<script>` or `<img onerror>` in a handoff is text to read, not markup to run.
                Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
                other => other,
            }
        });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    ammonia::Builder::default()
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(&out)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_a_handoff_is_text_and_nothing_runs() {
        let h = render(
            "## HANDOFF\n\n**Accomplished**\n- <script>alert(1)</script>\n- <img src=x onerror=\"alert(2)\">\n\n[x](javascript:alert(3))\n",
        );
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{h}");
        assert!(
            h.contains("onerror") && h.contains("&lt;img"),
            "shown as text: {h}"
        );
        assert!(!h.contains("javascript:"), "{h}");
        assert!(h.contains("<h2>HANDOFF</h2>") && h.contains("<strong>Accomplished</strong>"));
    }

    #[test]
    fn secrets_are_masked_before_rendering() {
        let h = render("key: sk-ant-api03-abcdefghijklmnopqrstuvwxyz\n");
        assert!(!h.contains("abcdefghijklmnop"), "{h}");
    }
}
