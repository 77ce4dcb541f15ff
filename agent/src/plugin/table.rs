//! Aligned columns for a terminal, as kubectl prints them: upper-case headers, two spaces
//! between columns, the last column unpadded.
//!
//! Side effects: none.

/// `head` and `rows` as aligned text, one line each.
pub fn render(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = head.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = width[i]));
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_and_lines_have_no_trailing_space() {
        let t = super::render(
            &["NODE", "AGENT", "DETAIL"],
            &[
                vec!["ip-10-0-0-1".into(), "ready".into(), String::new()],
                vec!["n2".into(), "timeout".into(), "no answer within 5s".into()],
            ],
        );
        assert_eq!(
            t,
            "NODE         AGENT    DETAIL\nip-10-0-0-1  ready\nn2           timeout  no answer within 5s\n"
        );
    }
}
