//! Handoffs: finding the last `## HANDOFF` block in an agent's output, its sections and COMPLETE marker,
//! validating it, and building a synthetic one when the agent wrote none.
//!
//! The parser works line by line and tracks fenced code blocks, so a handoff quoted
//! inside ```` ``` ```` is never taken for the real one. It is tolerant of heading
//! level (`#` to `######`, or `**HANDOFF**`), case and surrounding whitespace.

pub mod prompt;

use std::fmt;

/// Rules from M2d.
pub const MIN_SUMMARY_CHARS: usize = 20;
pub const MAX_HANDOFF_CHARS: usize = 10_000;
/// How much of the output tail a synthetic handoff carries.
pub const SYNTHETIC_TAIL_CHARS: usize = 3_000;

/// A handoff block found in an agent's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The whole block, heading included, trimmed.
    pub text: String,
    pub complete: bool,
    pub accomplished: Option<String>,
    pub remaining: Option<String>,
    pub context: Option<String>,
}

/// Why a handoff was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Missing,
    SummaryTooShort { chars: usize },
    RemainingEmpty,
    TooLong { chars: usize },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Missing => write!(f, "no handoff block in the output"),
            Invalid::SummaryTooShort { chars } => write!(
                f,
                "the Accomplished summary has {chars} characters (at least {MIN_SUMMARY_CHARS} needed)"
            ),
            Invalid::RemainingEmpty => {
                write!(f, "Remaining is empty but the handoff is not COMPLETE")
            }
            Invalid::TooLong { chars } => write!(
                f,
                "the handoff has {chars} characters (at most {MAX_HANDOFF_CHARS} allowed)"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Accomplished,
    Remaining,
    Context,
}

/// If `line` is a handoff heading, whether it carries the COMPLETE marker.
fn handoff_heading(line: &str) -> Option<bool> {
    let t = line.trim();
    let rest = if let Some(stripped) = t.strip_prefix('#') {
        let stripped = stripped.trim_start_matches('#');
        // At most six levels, and a space (or nothing) after the hashes, as in Markdown.
        if t.len() - stripped.len() > 6 {
            return None;
        }
        stripped.trim()
    } else if let Some(stripped) = t.strip_prefix("**") {
        stripped.trim()
    } else {
        return None;
    };
    let rest = rest.trim_end_matches('*').trim();
    if rest.len() < 7 || !rest.is_char_boundary(7) || !rest[..7].eq_ignore_ascii_case("handoff") {
        return None;
    }
    let tail = rest[7..].trim_matches(|c: char| {
        c.is_whitespace() || matches!(c, ':' | '-' | '—' | '(' | ')' | '[' | ']' | '*')
    });
    if tail.is_empty() {
        Some(false)
    } else if tail.eq_ignore_ascii_case("complete") {
        Some(true)
    } else {
        None
    }
}

/// If `line` opens one of the three sections, which one, and any text after the label.
fn section_heading(line: &str) -> Option<(Section, String)> {
    let t = line.trim();
    let (body, is_heading) = if t.starts_with('#') {
        (t.trim_start_matches('#').trim(), true)
    } else {
        (t, false)
    };
    let body = body.trim_start_matches(['*', '_']).trim_start();
    let lower = body.to_ascii_lowercase();
    let names: [(&str, Section); 5] = [
        ("accomplished", Section::Accomplished),
        ("remaining", Section::Remaining),
        ("context", Section::Context),
        ("next steps", Section::Remaining),
        ("summary", Section::Accomplished),
    ];
    for (name, section) in names {
        if let Some(after) = lower.strip_prefix(name) {
            let after_orig = &body[body.len() - after.len()..];
            let after_trim = after_orig.trim_start_matches(['*', '_', ':', ' ']);
            let after_trim = after_trim.trim_start_matches(['*', '_']).trim();
            // A label needs a heading marker, bold, or a colon, so ordinary prose
            // starting with "Context …" is not taken for a section.
            let labelled = is_heading
                || t.starts_with("**")
                || t.starts_with("__")
                || after_orig.trim_start_matches(['*', '_']).starts_with(':');
            if labelled && (after_trim.is_empty() || !is_heading) {
                return Some((section, after_trim.to_string()));
            }
        }
    }
    None
}

/// Tracks fenced code blocks (``` and ~~~, three or more) line by line.
#[derive(Default)]
struct Fences {
    open: Option<(char, usize)>,
}

impl Fences {
    /// Feed a line; returns true when the line is inside a fence (or is a fence line).
    fn step(&mut self, line: &str) -> bool {
        let t = line.trim_start();
        let fence = ['`', '~'].into_iter().find_map(|c| {
            let n = t.chars().take_while(|&x| x == c).count();
            (n >= 3).then_some((c, n))
        });
        match (self.open, fence) {
            (None, Some(f)) => {
                self.open = Some(f);
                true
            }
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n && t[n2..].trim().is_empty() => {
                self.open = None;
                true
            }
            (Some(_), _) => true,
            (None, None) => false,
        }
    }
}

/// Finds the last handoff block in `output` (outside code fences) and splits it into sections.
pub fn parse(output: &str) -> Option<Handoff> {
    let lines: Vec<&str> = output.lines().collect();
    let mut fences = Fences::default();
    let mut start = None;
    for (i, line) in lines.iter().enumerate() {
        if fences.step(line) {
            continue;
        }
        if let Some(complete) = handoff_heading(line) {
            start = Some((i, complete));
        }
    }
    let (start, complete) = start?;
    let block = &lines[start..];
    let mut sections: [Vec<&str>; 3] = Default::default();
    let mut firsts: [String; 3] = Default::default();
    let mut current: Option<Section> = None;
    let mut fences = Fences::default();
    for line in &block[1..] {
        let in_fence = fences.step(line);
        if !in_fence && let Some((section, first)) = section_heading(line) {
            current = Some(section);
            let i = section as usize;
            if !first.is_empty() {
                firsts[i] = first;
            }
            continue;
        }
        if let Some(section) = current {
            sections[section as usize].push(line);
        }
    }
    let text_of = |i: usize| -> Option<String> {
        let mut s = firsts[i].clone();
        let body = sections[i].join("\n");
        let body = body.trim();
        if !body.is_empty() {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(body);
        }
        let s = s.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    Some(Handoff {
        text: block.join("\n").trim().to_string(),
        complete,
        accomplished: text_of(Section::Accomplished as usize),
        remaining: text_of(Section::Remaining as usize),
        context: text_of(Section::Context as usize),
    })
}

/// "None", "n/a", "-" and friends say nothing remains.
fn is_placeholder(s: &str) -> bool {
    let t = s
        .trim()
        .trim_start_matches(['-', '*', ' '])
        .trim_end_matches('.')
        .to_ascii_lowercase();
    matches!(
        t.as_str(),
        "" | "none" | "n/a" | "na" | "nothing" | "-" | "nothing remaining" | "nothing left"
    )
}

/// Checks a handoff against the M2d rules.
pub fn validate(h: &Handoff) -> Result<(), Invalid> {
    let chars = h.text.chars().count();
    if chars >= MAX_HANDOFF_CHARS {
        return Err(Invalid::TooLong { chars });
    }
    let summary = h.accomplished.as_deref().unwrap_or("").trim();
    let summary_chars = summary.chars().count();
    if summary_chars < MIN_SUMMARY_CHARS {
        return Err(Invalid::SummaryTooShort {
            chars: summary_chars,
        });
    }
    if !h.complete && h.remaining.as_deref().is_none_or(is_placeholder) {
        return Err(Invalid::RemainingEmpty);
    }
    Ok(())
}

/// Parses and validates in one step: the handoff to use, or why there is none.
pub fn extract(output: &str) -> Result<Handoff, Invalid> {
    let h = parse(output).ok_or(Invalid::Missing)?;
    validate(&h)?;
    Ok(h)
}

/// The last `n` characters of `s` (on a char boundary).
pub fn tail_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let skip = count - n;
    let (idx, _) = s.char_indices().nth(skip).unwrap_or((0, ' '));
    &s[idx..]
}

/// A code fence longer than any run of backticks in `body`, so the body cannot close it.
fn fence_for(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// A handoff the operator writes when the agent did not write a valid one: what is known
/// (the reason, the error) plus the tail of the output, so the next session can go on.
pub fn synthetic(session_index: u32, reason: &str, error: Option<&str>, output: &str) -> Handoff {
    // What the agent printed goes in fences long enough that no line of it can close them, so a
    // heading in it (`## HANDOFF`, `### Remaining`) is never read as part of this handoff.
    let output = output.replace("\r\n", "\n");
    let tail = tail_chars(output.trim(), SYNTHETIC_TAIL_CHARS);
    let fence = fence_for(tail);
    let accomplished = format!(
        "Unknown: session {session_index} ended without a valid handoff ({reason}). \
         This handoff was written by the operator, not by the agent."
    );
    let remaining = "The task is not known to be complete. Check the working tree and the output \
                     below, then continue the task."
        .to_string();
    let mut context = String::new();
    if let Some(e) = error {
        let e = e.replace("\r\n", "\n");
        let e = e.trim();
        if e.lines().count() <= 1 && !e.contains(['`', '~', '#', '*', '_']) {
            context.push_str(&format!("The session ended with an error: {e}\n\n"));
        } else {
            let fence = fence_for(e);
            context.push_str(&format!(
                "The session ended with an error:\n\n{fence}text\n{e}\n{fence}\n\n"
            ));
        }
    }
    if tail.is_empty() {
        context.push_str("The session produced no output.");
    } else {
        context.push_str(&format!(
            "The last {} characters of the session output:\n\n{fence}text\n{tail}\n{fence}",
            tail.chars().count()
        ));
    }
    let text = format!(
        "## HANDOFF\n\n### Accomplished\n{accomplished}\n\n### Remaining\n{remaining}\n\n### Context\n{context}"
    );
    Handoff {
        text,
        complete: false,
        accomplished: Some(accomplished),
        remaining: Some(remaining),
        context: Some(context),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "Some work.\n\n## HANDOFF\n\n### Accomplished\nWrote the parser and its tests.\n\n### Remaining\n- wire it into the CLI\n\n### Context\nSee src/parser.rs.\n";

    #[test]
    fn an_error_holding_headings_stays_inside_the_synthetic_handoff() {
        // Found by tests/properties.rs: the error was written inline, and its headings became
        // the handoff's own when it was read back.
        let error = "## HANDOFF\r\n### Remaining\nnothing";
        let h = synthetic(1, "no handoff", Some(error), "## HANDOFF: COMPLETE");
        assert_eq!(parse(&h.text).as_ref(), Some(&h));
        assert!(!h.complete);
        let plain = synthetic(2, "no handoff", Some("exit code 1"), "");
        assert!(
            plain
                .text
                .contains("The session ended with an error: exit code 1")
        );
    }

    #[test]
    fn finds_a_plain_handoff_and_its_sections() {
        let h = parse(GOOD).unwrap();
        assert!(!h.complete);
        assert_eq!(
            h.accomplished.as_deref(),
            Some("Wrote the parser and its tests.")
        );
        assert_eq!(h.remaining.as_deref(), Some("- wire it into the CLI"));
        assert_eq!(h.context.as_deref(), Some("See src/parser.rs."));
        assert!(h.text.starts_with("## HANDOFF"));
        assert!(validate(&h).is_ok());
    }

    #[test]
    fn complete_marker_in_many_spellings() {
        for heading in [
            "## HANDOFF: COMPLETE",
            "## handoff: complete",
            "#HANDOFF:COMPLETE",
            "### Handoff - Complete",
            "# HANDOFF (COMPLETE)",
            "**HANDOFF: COMPLETE**",
            "   ##   HANDOFF :  COMPLETE   ",
        ] {
            let text = format!("{heading}\n### Accomplished\nEverything that was asked is done.\n");
            let h = parse(&text).unwrap_or_else(|| panic!("not found: {heading}"));
            assert!(h.complete, "{heading}");
            assert!(validate(&h).is_ok(), "{heading}");
        }
    }

    #[test]
    fn other_headings_are_not_handoffs() {
        assert!(parse("## Handoffs are great\ntext").is_none());
        assert!(parse("## HANDOFF: PARTIAL\n### Accomplished\nx").is_none());
        assert!(parse("HANDOFF: COMPLETE without heading").is_none());
        assert!(parse("####### HANDOFF\n").is_none());
    }

    #[test]
    fn ignores_a_handoff_inside_a_code_fence() {
        let text = "Here is the format:\n```markdown\n## HANDOFF: COMPLETE\n### Accomplished\nfake fake fake fake fake\n```\nDone for now.";
        assert!(parse(text).is_none());
    }

    #[test]
    fn a_real_handoff_after_a_fenced_example_is_found() {
        let text = "```\n## HANDOFF: COMPLETE\n```\n## HANDOFF\n### Accomplished\nImplemented the first half of it.\n### Remaining\nThe second half.";
        let h = parse(text).unwrap();
        assert!(!h.complete);
        assert_eq!(h.remaining.as_deref(), Some("The second half."));
    }

    #[test]
    fn tilde_fences_and_longer_fences() {
        let text =
            "~~~\n## HANDOFF: COMPLETE\n~~~\n````\n```\n## HANDOFF: COMPLETE\n```\n````\nnothing";
        assert!(parse(text).is_none());
    }

    #[test]
    fn the_last_handoff_wins() {
        let text = "## HANDOFF\n### Accomplished\nFirst attempt at a summary.\n### Remaining\nmore\n\n## HANDOFF: COMPLETE\n### Accomplished\nSecond and final summary text.";
        let h = parse(text).unwrap();
        assert!(h.complete);
        assert_eq!(
            h.accomplished.as_deref(),
            Some("Second and final summary text.")
        );
    }

    #[test]
    fn bold_and_colon_labels_are_sections() {
        let text = "## HANDOFF\n**Accomplished:** Added the store and its migrations.\n**Remaining:** the API layer\nContext: uses sqlx";
        let h = parse(text).unwrap();
        assert_eq!(
            h.accomplished.as_deref(),
            Some("Added the store and its migrations.")
        );
        assert_eq!(h.remaining.as_deref(), Some("the API layer"));
        assert_eq!(h.context.as_deref(), Some("uses sqlx"));
    }

    #[test]
    fn prose_starting_with_a_section_word_is_not_a_section() {
        let text = "## HANDOFF\n### Accomplished\nContext switching was removed from the scheduler.\n### Remaining\nbenchmarks";
        let h = parse(text).unwrap();
        assert_eq!(
            h.accomplished.as_deref(),
            Some("Context switching was removed from the scheduler.")
        );
        assert!(h.context.is_none());
    }

    #[test]
    fn case_and_heading_levels_of_sections() {
        let text = "# handoff\n#### ACCOMPLISHED\nA long enough summary of the work.\n## remaining\nthings\n###### context\nnotes";
        let h = parse(text).unwrap();
        assert_eq!(h.remaining.as_deref(), Some("things"));
        assert_eq!(h.context.as_deref(), Some("notes"));
        assert!(validate(&h).is_ok());
    }

    #[test]
    fn short_summary_is_invalid() {
        let h = parse("## HANDOFF\n### Accomplished\nstuff\n### Remaining\nall").unwrap();
        assert_eq!(validate(&h), Err(Invalid::SummaryTooShort { chars: 5 }));
    }

    #[test]
    fn missing_summary_is_invalid() {
        let h = parse("## HANDOFF: COMPLETE\nAll done, really, everything.").unwrap();
        assert_eq!(validate(&h), Err(Invalid::SummaryTooShort { chars: 0 }));
    }

    #[test]
    fn empty_remaining_is_invalid_unless_complete() {
        let inc = parse(
            "## HANDOFF\n### Accomplished\nA long enough summary here.\n### Remaining\nNone.\n",
        )
        .unwrap();
        assert_eq!(validate(&inc), Err(Invalid::RemainingEmpty));
        let no_section =
            parse("## HANDOFF\n### Accomplished\nA long enough summary here.").unwrap();
        assert_eq!(validate(&no_section), Err(Invalid::RemainingEmpty));
        let done = parse("## HANDOFF: COMPLETE\n### Accomplished\nA long enough summary here.\n### Remaining\nnone").unwrap();
        assert!(validate(&done).is_ok());
    }

    #[test]
    fn too_long_is_invalid() {
        let big = format!(
            "## HANDOFF\n### Accomplished\n{}\n### Remaining\nx",
            "a".repeat(MAX_HANDOFF_CHARS)
        );
        assert!(matches!(extract(&big), Err(Invalid::TooLong { .. })));
    }

    #[test]
    fn five_megabytes_of_output_is_handled() {
        let mut out = "line of output\n".repeat(350_000);
        out.push_str(GOOD);
        assert!(out.len() > 5_000_000);
        let h = extract(&out).unwrap();
        assert_eq!(h.remaining.as_deref(), Some("- wire it into the CLI"));
    }

    #[test]
    fn missing_handoff() {
        assert_eq!(extract("I did some things."), Err(Invalid::Missing));
        assert_eq!(extract(""), Err(Invalid::Missing));
    }

    #[test]
    fn crlf_and_unicode_are_fine() {
        let text =
            "## HANDOFF: COMPLETE\r\n### Accomplished\r\nÜbersetzt und geprüft — alles fertig.\r\n";
        let h = extract(text).unwrap();
        assert!(h.complete);
    }

    #[test]
    fn synthetic_handoff_is_valid_and_carries_the_tail() {
        let output = format!("{}THE END", "x".repeat(10_000));
        let h = synthetic(3, "no handoff block in the output", Some("exit 1"), &output);
        assert!(validate(&h).is_ok(), "{:?}", validate(&h));
        assert!(!h.complete);
        assert!(h.text.contains("THE END"));
        assert!(h.text.contains("exit 1"));
        assert!(h.text.chars().count() < MAX_HANDOFF_CHARS);
        // The synthetic handoff parses back to itself.
        let back = parse(&h.text).unwrap();
        assert_eq!(back.remaining, h.remaining);
    }

    #[test]
    fn synthetic_handoff_survives_fences_in_the_output() {
        let output = "```\n## HANDOFF: COMPLETE\n```\n````";
        let h = synthetic(1, "r", None, output);
        let back = parse(&h.text).unwrap();
        assert!(!back.complete);
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail_chars("héllo", 3), "llo");
        assert_eq!(tail_chars("ab", 5), "ab");
        assert_eq!(tail_chars("ääää", 2), "ää");
    }
}
