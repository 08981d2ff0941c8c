//! A markdown checklist as a backlog: `- [ ] title` items (`[x]` done), each item's indented
//! text its details, `after:` markers naming items that must finish first; and the check-off
//! of one item in the text.

use super::Draft;

/// A checkbox item at the top of the list: its indent, whether it is checked, its title.
fn checkbox(line: &str) -> Option<(usize, bool, &str)> {
    let indent = line.len() - line.trim_start().len();
    if indent > 3 {
        return None;
    }
    let rest = line.trim_start();
    let rest = rest
        .strip_prefix("- ")
        .or_else(|| rest.strip_prefix("* "))
        .or_else(|| rest.strip_prefix("+ "))?;
    let (done, title) = if let Some(t) = rest.strip_prefix("[ ] ") {
        (false, t)
    } else if let Some(t) = rest
        .strip_prefix("[x] ")
        .or_else(|| rest.strip_prefix("[X] "))
    {
        (true, t)
    } else {
        return None;
    };
    let title = title.trim();
    (!title.is_empty()).then_some((indent, done, title))
}

/// The items of a checklist, in order.
pub fn parse(text: &str) -> Vec<Draft> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((indent, done, title)) = checkbox(lines[i]) else {
            i += 1;
            continue;
        };
        let mut body = Vec::new();
        let mut j = i + 1;
        while j < lines.len() {
            let l = lines[j];
            let ind = l.len() - l.trim_start().len();
            if !l.trim().is_empty() && (ind <= indent || checkbox(l).is_some_and(|c| c.0 <= indent))
            {
                break;
            }
            body.push(l);
            j += 1;
        }
        while body.last().is_some_and(|l| l.trim().is_empty()) {
            body.pop();
        }
        let strip = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let details: Vec<String> = body
            .iter()
            .map(|l| l.get(strip..).unwrap_or("").trim_end().to_string())
            .collect();
        out.push(Draft::new(title, &details.join("\n"), done));
        i = j;
    }
    out
}

/// `text` with the open item titled `title` checked; `None` when there is no such open item.
pub fn check_off(text: &str, title: &str) -> Option<String> {
    let mut found = false;
    let mut out: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        if !found
            && let Some((_, false, t)) = checkbox(line.trim_end_matches(['\n', '\r']))
            && Draft::new(t, "", false).title == title
        {
            found = true;
            out.push(line.replacen("[ ]", "[x]", 1));
            continue;
        }
        out.push(line.to_string());
    }
    found.then(|| out.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASKS: &str = "# Tasks\n\nSome intro.\n\n- [ ] Port the parser to nom\n  The parser lives in src/parse.rs.\n\n  Keep the error messages.\n- [x] Set up CI\n- [ ] Add fuzzing (after: port the parser to nom)\n* [ ] Write the docs\n    after: add-fuzzing, #1\n    Mention the fuzzing.\n\nNot a task.\n";

    #[test]
    fn items_their_details_and_after_markers_are_read() {
        let items = parse(TASKS);
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].title, "Port the parser to nom");
        assert_eq!(
            items[0].details,
            "The parser lives in src/parse.rs.\n\nKeep the error messages."
        );
        assert!(!items[0].done && items[1].done);
        assert_eq!(items[2].title, "Add fuzzing");
        assert_eq!(items[2].after, ["port the parser to nom"]);
        assert_eq!(items[3].after, ["add-fuzzing", "#1"]);
        assert_eq!(items[3].details, "Mention the fuzzing.");
    }

    #[test]
    fn checking_off_changes_that_one_box() {
        let after = check_off(TASKS, "Add fuzzing").unwrap();
        assert!(after.contains("- [x] Add fuzzing (after: port the parser to nom)\n"));
        assert_eq!(after.matches("[x]").count(), 2);
        assert_eq!(after.len(), TASKS.len());
        assert!(check_off(TASKS, "Set up CI").is_none(), "already done");
        assert!(check_off(TASKS, "Nope").is_none());
        // CRLF files keep their line ends.
        let crlf = "- [ ] A\r\n- [ ] B\r\n";
        assert_eq!(check_off(crlf, "B").unwrap(), "- [ ] A\r\n- [x] B\r\n");
    }
}
