//! The configuration reference, docs/reference/config.md, lists exactly
//! the keys the config reader accepts: every accepted key has a row, every
//! row is accepted. The accepted keys come from the reader itself
//! (`accepted_keys`), so a key added to the code without a row, or a row for
//! a key that is gone, fails here with the rows to add or remove. Every
//! row's `reload` column says what the reader says: `restart` for a key it
//! reads only at start (reload keeps its running value), else `live`.

use std::collections::BTreeSet;

/// The whole file is the reference: every `| key | ... |` table in it counts.
const REFERENCE: &str = include_str!("../docs/reference/config.md");
const PATH: &str = "docs/reference/config.md";
const TITLE: &str = "# Configuration reference";
/// A row that stands for every `defaults` key under `services[]`.
const POLICY_ROW: &str = "services[].<policy key>";

/// The column every key table has for how a reload treats the key.
const RELOAD_COLUMN: &str = "reload";

/// A documented key, its `reload` cell and the line of its row in the reference.
struct Row {
    key: String,
    reload: String,
    line: usize,
}

/// The first-column keys of every `| key | ... |` table in the reference
/// with their `reload` cells, and a problem for each row whose first column
/// is not one backticked key and each table without a `reload` column.
fn documented_rows() -> (Vec<Row>, Vec<String>) {
    assert_eq!(
        REFERENCE.lines().next().map(str::trim_end),
        Some(TITLE),
        "{PATH} must open with {TITLE:?}"
    );
    let mut rows = Vec::new();
    let mut malformed = Vec::new();
    let mut in_table = false;
    let mut reload_at = None;
    for (index, line) in REFERENCE.lines().enumerate() {
        let Some(cells) = line.trim().strip_prefix('|') else {
            in_table = false;
            continue;
        };
        let cells: Vec<&str> = cells.split('|').map(str::trim).collect();
        let first = cells[0];
        if !in_table {
            in_table = first == "key";
            if in_table {
                reload_at = cells.iter().position(|cell| *cell == RELOAD_COLUMN);
                if reload_at.is_none() {
                    malformed.push(format!(
                        "{PATH}:{}: the table needs a `{RELOAD_COLUMN}` column",
                        index + 1
                    ));
                }
            }
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
                reload: reload_at
                    .and_then(|at| cells.get(at))
                    .map_or_else(String::new, |cell| cell.trim_matches('`').to_string()),
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

    for row in &rows {
        let expected = if row.key == POLICY_ROW {
            policy_row_class(&accepted)
        } else if accepted.keys.contains(&row.key) {
            accepted.reload_class(&row.key).as_str()
        } else {
            continue;
        };
        if row.reload != expected {
            problems.push(format!(
                "{PATH}:{}: write `{expected}` in the {RELOAD_COLUMN} column of `{}`, not {:?}",
                row.line, row.key, row.reload
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "{PATH} and the config reader disagree:\n{}",
        problems.join("\n")
    );
}

/// The reload class every policy key of a service shares.
///
/// # Panics
/// When services' policy keys differ: then one row cannot stand for them all.
fn policy_row_class(accepted: &outrigger::config::KeyLog) -> &'static str {
    let classes: BTreeSet<&str> = accepted
        .keys
        .iter()
        .filter(|key| key.starts_with("services[]."))
        .map(|key| accepted.reload_class(key).as_str())
        .collect();
    assert_eq!(
        classes.len(),
        1,
        "services[] keys are {classes:?} on reload: `{POLICY_ROW}` cannot stand for them all"
    );
    classes.into_iter().next().unwrap_or_default()
}
