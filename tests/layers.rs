//! The layer rule of `src/core/`, checked on the source: code there imports
//! only `std`, `rand` and `crate::core` itself, and draws no randomness of
//! its own (it is passed in). A `use crate::config::...`, a
//! `super::super::...`, a path through another dependency or a
//! `rand::rng()` anywhere under `src/core/` fails here with its file and line.
//! And the rule of `src/http/`: nothing there imports from the stateful
//! layers or the listeners above it (`crate::replica`, `super::super::inbound`);
//! nor does the shared layer (config, errors, observability), which also
//! stays below `http`.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the pure building blocks live, from the crate root.
const CORE: &str = "src/core";
/// Dependencies code under `src/core/` may name besides the standard library.
const CORE_DEPENDENCIES: [&str; 1] = ["rand"];
/// Roots a `use` under `src/core/` may start from (`crate` and `super` are
/// checked further below).
const USE_ROOTS: [&str; 7] = ["std", "core", "alloc", "rand", "crate", "super", "self"];
/// Ways of drawing randomness that does not come in from the caller.
const OWN_RANDOMNESS: [&str; 7] = [
    "rand::rng",
    "rand::random",
    "thread_rng",
    "from_os_rng",
    "from_entropy",
    "OsRng",
    "getrandom",
];

#[test]
fn core_imports_nothing_from_the_rest_of_the_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dependencies =
        dependencies(&fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml"));
    assert!(
        dependencies.iter().any(|name| name == "actix"),
        "the [dependencies] of Cargo.toml were read: {dependencies:?}"
    );
    let mut files = Vec::new();
    rust_files(&root.join(CORE), &mut files);
    assert!(files.len() >= 5, "the blocks under {CORE}: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let source = fs::read_to_string(file).expect("readable source");
        let relative = file.strip_prefix(root).expect("under the crate root");
        let is_core_root = relative == Path::new(CORE).join("mod.rs");
        for (line, problem) in check(&source, is_core_root, &dependencies) {
            problems.push(format!("{}:{line}: {problem}", relative.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "{CORE} may import only std, rand and crate::core (see {CORE}/mod.rs):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_catches_each_way_out_of_core() {
    let dependencies = vec!["actix".to_string(), "log".to_string(), "rand".to_string()];
    let problems = |source: &str, is_core_root: bool| {
        check(source, is_core_root, &dependencies)
            .into_iter()
            .map(|(line, _)| line)
            .collect::<Vec<_>>()
    };
    let fine = "use std::time::Duration;\nuse rand::Rng;\n\
                use crate::core::backoff::Backoff;\nuse super::Ewma;\n\
                use rand::rngs::SmallRng;\nlet c = '\\'';\n\
                pub(crate) mod pick;\n// use crate::config::Policy;\n\
                /* log::warn!(); */\nconst A: &str = \"crate::config\";\n\
                fn f(rng: &mut impl rand::Rng) -> u32 { rng.random() }\n";
    assert_eq!(problems(fine, false), Vec::<usize>::new());
    assert_eq!(problems("use crate::config::Policy;", false), [1]);
    assert_eq!(problems("\nuse crate::{core::pick, metrics};", false), [2]);
    assert_eq!(problems("fn f() { crate::replica::lease(); }", false), [1]);
    assert_eq!(problems("use super::super::replica::Lease;", false), [1]);
    assert_eq!(problems("use super::config::Policy;", true), [1]);
    assert_eq!(problems("use log::warn;", false), [1]);
    assert_eq!(problems("fn f() { actix::spawn(async {}); }", false), [1]);
    assert_eq!(problems("let n: u32 = rand::rng().random();", false), [1]);
    assert_eq!(problems("let r = SmallRng::from_os_rng();", false), [1]);
    assert_eq!(problems("let q = '\"'; use crate::config::X;", false), [1]);
    assert_eq!(
        problems("fn f<'a>(s: &'a str) { crate::x::y(s); }", false),
        [1]
    );
    assert_eq!(
        problems("use\n    crate::metrics::Metrics;", false),
        [2],
        "a use over several lines is placed at the path"
    );
}

/// Where HTTP both listeners share lives, from the crate root.
const HTTP: &str = "src/http";
/// The modules above `src/http/`, which nothing under it may import from.
const ABOVE_HTTP: [&str; 10] = [
    "replica",
    "balance",
    "service",
    "store",
    "discovery",
    "inbound",
    "outbound",
    "admin",
    "reload",
    "tools",
];

#[test]
fn http_imports_nothing_from_the_layers_above() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = layer_files(root, &[HTTP]);
    assert!(files.len() >= 10, "the modules under {HTTP}: {files:?}");
    let problems = imports_up(root, &files, &ABOVE_HTTP);
    assert!(
        problems.is_empty(),
        "{HTTP} may not import from {ABOVE_HTTP:?} (see {HTTP}/mod.rs):\n{}",
        problems.join("\n")
    );
}

/// The shared layer: what every other layer may use (config, errors and
/// their answers, observability), from the crate root.
const SHARED: [&str; 10] = [
    "src/config",
    "src/error.rs",
    "src/logging",
    "src/logging.rs",
    "src/metrics.rs",
    "src/otlp.rs",
    "src/tls",
    "src/tls.rs",
    "src/trace.rs",
    "src/watch.rs",
];

#[test]
fn the_shared_layer_imports_nothing_from_the_layers_above() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = layer_files(root, &SHARED);
    let mut above = vec!["http"];
    above.extend(ABOVE_HTTP);
    let problems = imports_up(root, &files, &above);
    assert!(
        problems.is_empty(),
        "the shared layer may not import from {above:?} (see src/lib.rs):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_catches_each_way_up_from_http() {
    let lines = |source: &str, depth: usize| {
        imports_from_above(source, depth, &ABOVE_HTTP)
            .into_iter()
            .map(|(line, _)| line)
            .collect::<Vec<_>>()
    };
    let fine = "use crate::config::AccessLog;\nuse super::client::Client;\n\
                use crate::http::listener::Front;\n// use crate::replica::Answer;\n\
                const A: &str = \"crate::inbound\";\nuse crate::{config, trace};\n";
    assert_eq!(lines(fine, 2), Vec::<usize>::new());
    assert_eq!(lines("use crate::replica::Answer;", 2), [1]);
    assert_eq!(lines("\nfn f() { crate::outbound::go(); }", 2), [2]);
    assert_eq!(lines("use crate::{config, service::Service};", 2), [1]);
    assert_eq!(lines("use super::super::inbound::Gate;", 2), [1]);
    assert_eq!(lines("use super::inbound::Gate;", 1), [1]);
    assert_eq!(
        lines("use super::super::forward::Target;", 3),
        Vec::<usize>::new()
    );
}

/// The Rust files of a layer's `parts` (folders and files, from `root`).
fn layer_files(root: &Path, parts: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for part in parts {
        let path = root.join(part);
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            assert!(path.is_file(), "{part} is where its layer lists it");
            files.push(path);
        }
    }
    files
}

/// Each import in `files` (under `root`) from a module of `above`, as
/// `file:line: imports from `module``.
fn imports_up(root: &Path, files: &[PathBuf], above: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files {
        let source = fs::read_to_string(file).expect("readable source");
        let relative = file.strip_prefix(root).expect("under the crate root");
        for (line, module) in imports_from_above(&source, module_depth(relative), above) {
            problems.push(format!(
                "{}:{line}: imports from `{module}`",
                relative.display()
            ));
        }
    }
    problems
}

/// How many modules deep the file at `relative` (from the crate root) is:
/// `src/http/mod.rs` is 1 (its `super` is the crate root), `src/http/x.rs`
/// and `src/http/x/mod.rs` are 2.
fn module_depth(relative: &Path) -> usize {
    let parts = relative.components().count() - 1;
    if relative.ends_with("mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Each path in `source` that reaches a module of `above`, with its
/// line; `depth` is the file's [`module_depth`], so a chain of that many
/// `super`s is the crate root.
fn imports_from_above(source: &str, depth: usize, above: &[&str]) -> Vec<(usize, String)> {
    let code = code_only(source);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, path) in paths(&code) {
        let segments: Vec<&str> = path.split("::").collect();
        let supers = segments.iter().take_while(|s| **s == "super").count();
        let from_root = match segments[0] {
            "crate" => &segments[1..],
            "super" if supers == depth => &segments[supers..],
            _ => continue,
        };
        let named: Vec<&str> = match from_root.first() {
            Some(&"{") => {
                let group = &code[at + path.len()..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or_default())
                    .collect()
            }
            Some(module) => vec![*module],
            None => continue,
        };
        for module in named {
            if above.contains(&module) {
                found.push((line_of(at), module.to_string()));
            }
        }
    }
    found
}

/// Each problem in `source` with its line: `is_core_root` for `core/mod.rs`,
/// whose `super` is the crate root; `dependencies` as Cargo.toml names them.
fn check(source: &str, is_core_root: bool, dependencies: &[String]) -> Vec<(usize, String)> {
    let code = code_only(source);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut problems = Vec::new();
    for (at, path) in paths(&code) {
        let root = path.split("::").next().unwrap_or_default();
        let outside = if root == "crate" {
            !path.starts_with("crate::core::")
        } else if root == "super" {
            is_core_root || path.starts_with("super::super")
        } else {
            dependencies
                .iter()
                .any(|name| *name == root && !CORE_DEPENDENCIES.contains(&root))
        };
        if outside {
            problems.push((line_of(at), format!("`{path}` leaves src/core")));
        }
    }
    for (at, root) in use_roots(&code) {
        if !USE_ROOTS.contains(&root.as_str()) {
            problems.push((
                line_of(at),
                format!("`use {root}` is not std, rand or core"),
            ));
        }
    }
    let is_ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    for draw in OWN_RANDOMNESS {
        for (at, _) in code.match_indices(draw) {
            let whole = !is_ident(code[..at].chars().next_back())
                && !is_ident(code[at + draw.len()..].chars().next());
            if whole {
                problems.push((line_of(at), format!("`{draw}`: randomness is passed in")));
            }
        }
    }
    problems.sort();
    problems.dedup_by_key(|(line, _)| *line);
    problems
}

/// Every path of two or more segments (`a::b`, `a::{b, c}` as `a::{`), with
/// the offset of its first segment.
fn paths(code: &str) -> Vec<(usize, String)> {
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let starts =
            is_ident(bytes[at]) && (at == 0 || !is_ident(bytes[at - 1]) && bytes[at - 1] != b':');
        if !starts {
            at += 1;
            continue;
        }
        let mut end = at;
        loop {
            while end < bytes.len() && is_ident(bytes[end]) {
                end += 1;
            }
            let rest = &code[end..];
            let gap = rest.len() - rest.trim_start().len();
            if !rest.trim_start().starts_with("::") {
                break;
            }
            let after = end + gap + 2;
            let next = code[after..].trim_start();
            end = code.len() - next.len();
            if next.starts_with('{') {
                end += 1;
                break;
            }
        }
        let path: String = code[at..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if path.contains("::") {
            found.push((at, path));
        }
        at = end.max(at + 1);
    }
    found
}

/// The first segment of every `use` path, with its offset.
fn use_roots(code: &str) -> Vec<(usize, String)> {
    let mut roots = Vec::new();
    for (at, _) in code.match_indices("use") {
        let before = code[..at].chars().next_back();
        let after = code[at + 3..].chars().next();
        let word = !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && after.is_some_and(char::is_whitespace);
        if !word {
            continue;
        }
        let rest = code[at + 3..].trim_start().trim_start_matches("::");
        let start = code.len() - rest.len();
        let root: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        roots.push((
            start,
            if root.is_empty() {
                rest.chars().take(1).collect()
            } else {
                root
            },
        ));
    }
    roots
}

/// `source` with comments and the insides of string and char literals
/// blanked out (newlines kept, so offsets still give lines). Raw strings
/// with `#` are not needed under src/core and not handled.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        // Where the comment or literal starting at `i` ends (exclusive).
        let end = match (c, next) {
            ('/', Some('/')) => (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len()),
            ('/', Some('*')) => (i + 2..chars.len())
                .find(|&j| chars[j - 1] == '*' && chars[j] == '/')
                .map_or(chars.len(), |j| j + 1),
            ('"', _) => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                (j + 1).min(chars.len())
            }
            // A char literal ('x' or '\x'), not a lifetime.
            ('\'', Some('\\')) => (i + 3..chars.len())
                .find(|&j| chars[j] == '\'')
                .map_or(chars.len(), |j| j + 1),
            ('\'', Some(_)) if chars.get(i + 2) == Some(&'\'') => i + 3,
            _ => {
                out.push(c);
                i += 1;
                continue;
            }
        };
        out.extend(chars[i..end].iter().map(|&c| blank(c)));
        i = end;
    }
    out
}

/// The names under `[dependencies]` in Cargo.toml, as paths spell them.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                names.push(name.trim().replace('-', "_"));
            }
        }
    }
    names
}

/// Every `.rs` file under `dir`, depth first.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .expect("a readable directory")
        .map(|entry| entry.expect("a readable entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}
