//! The configuration reference, docs/reference/config.md, lists exactly
//! the keys the config reader accepts: every accepted key has a row, every
//! row is accepted. The accepted keys come from the reader itself
//! (`accepted_keys`), so a key added to the code without a row, or a row for
//! a key that is gone, fails here with the rows to add or remove.

use std::collections::BTreeSet;

/// The whole file is the reference: every `| key | ... |` table in it counts.
const REFERENCE: &str = include_str!("../docs/reference/config.md");
const PATH: &str = "docs/reference/config.md";
const TITLE: &str = "# Configuration reference";
/// A row that stands for every `defaults` key under `services[]`.
const POLICY_ROW: &str = "services[].<policy key>";

/// A documented key and the line of its row in the reference.
struct Row {
    key: String,
    line: usize,
}

/// The first-column keys of every `| key | ... |` table in the reference,
/// and a problem for each row whose first column is not one backticked key.
fn documented_rows() -> (Vec<Row>, Vec<String>) {
    assert_eq!(
        REFERENCE.lines().next().map(str::trim_end),
        Some(TITLE),
        "{PATH} must open with {TITLE:?}"
    );
    let mut rows = Vec::new();
    let mut malformed = Vec::new();
    let mut in_table = false;
    for (index, line) in REFERENCE.lines().enumerate() {
        let Some(cells) = line.trim().strip_prefix('|') else {
            in_table = false;
            continue;
        };
        let first = cells.split('|').next().unwrap_or("").trim();
        if !in_table {
            in_table = first == "key";
            continue;
        }
        if first.starts_with("---") {
            continue;
        }
        match first
            .strip_prefix('`')
            .and_then(|rest| rest.strip_suffix('`'))
            .filter(|key| !key.is_empty() && !key.contains('`'))
        {
            Some(key) => rows.push(Row {
                key: key.to_string(),
                line: index + 1,
            }),
            None => malformed.push(format!(
                "{PATH}:{}: the first column must be one `key`, got {first:?}",
                index + 1
            )),
        }
    }
    (rows, malformed)
}

#[test]
fn the_configuration_reference_lists_exactly_the_accepted_keys() {
    let accepted = outrigger::config::accepted_keys();
    let is_section = |key: &str| {
        accepted.sections.contains(key) || accepted.sections.contains(&format!("{key}[]"))
    };
    let (rows, mut problems) = documented_rows();
    assert!(rows.len() > 50, "only {} rows found in {PATH}", rows.len());

    let mut documented = BTreeSet::new();
    for row in &rows {
        if !documented.insert(row.key.as_str()) {
            problems.push(format!(
                "{PATH}:{}: `{}` has a second row: remove one",
                row.line, row.key
            ));
        }
    }
    let policy_row = documented.contains(POLICY_ROW);
    let covered = |key: &str| {
        documented.contains(key)
            || (policy_row
                && key
                    .strip_prefix("services[].")
                    .is_some_and(|rest| accepted.keys.contains(&format!("defaults.{rest}"))))
    };

    let to_add: Vec<&String> = accepted
        .keys
        .iter()
        .filter(|key| !is_section(key) && !covered(key))
        .collect();
    if !to_add.is_empty() {
        problems.push(format!(
            "add a row to {PATH} for each key the config reader accepts:\n{}",
            to_add
                .iter()
                .map(|key| format!("  | `{key}` | unit | default | meaning |"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }

    for row in &rows {
        if row.key == POLICY_ROW || accepted.keys.contains(&row.key) {
            continue;
        }
        // A key under one the reader asks for but never opened: the section
        // is missing from the skeleton config the keys are listed from.
        let unopened = accepted.keys.iter().find(|key| {
            !is_section(key)
                && (row.key.starts_with(&format!("{key}."))
                    || row.key.starts_with(&format!("{key}[")))
        });
        problems.push(match unopened {
            Some(parent) => format!(
                "{PATH}:{}: `{}` is under `{parent}`, a key the reader accepts but src/config/keys.rs \
                 does not open as a section: if it is one, add it to EVERY_SECTION there so its \
                 keys are listed; if not, remove the row",
                row.line, row.key
            ),
            None => format!(
                "{PATH}:{}: remove the row for `{}`: the config reader does not accept it",
                row.line, row.key
            ),
        });
    }

    assert!(
        problems.is_empty(),
        "{PATH} and the config reader disagree:\n{}",
        problems.join("\n")
    );
}
