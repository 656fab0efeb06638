//! Where each key path is written in a config's text. The `Value` tree the
//! reader walks has no positions, so errors are placed by a second pass
//! over the same text with an event parser that keeps them.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

use super::reader::{child_path, ConfigError, Position};

/// The position of every mapping key and list item in a YAML text, by key
/// path (`services[1].circuit_breaker.cooldown`, `services[0].endpoints[1]`).
#[derive(Debug, Default)]
pub(crate) struct Locator {
    positions: HashMap<String, Position>,
}

/// One open collection while the events are walked.
enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next, or
    /// `None` when the next node is a key.
    Mapping { path: String, key: Option<String> },
    /// A list at `path`; `next` is the index of the next item.
    Sequence { path: String, next: usize },
}

/// Stands for a key that is not a plain scalar (a mapping used as a key,
/// an alias): no reader path can name it.
const UNNAMED_KEY: &str = "\0";

impl Locator {
    /// Walks `text`; a syntax error ends the walk with what was found so far.
    pub fn new(text: &str) -> Locator {
        let mut positions = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else {
                break;
            };
            let position = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            let is_node = matches!(
                event,
                Event::Scalar(..)
                    | Event::Alias(_)
                    | Event::MappingStart(..)
                    | Event::SequenceStart(..)
            );
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
                continue;
            }
            if !is_node {
                continue;
            }
            // A key of the mapping on top: remember it and where it is written.
            if let Some(Frame::Mapping {
                path,
                key: key @ None,
            }) = stack.last_mut()
            {
                let name = match &event {
                    Event::Scalar(name, ..) => name.to_string(),
                    _ => UNNAMED_KEY.to_string(),
                };
                if name != UNNAMED_KEY {
                    positions.insert(child_path(path, &name), position);
                }
                *key = Some(name);
                if let Event::MappingStart(..) | Event::SequenceStart(..) = event {
                    stack.push(unnamed_frame(&event));
                }
                continue;
            }
            // A value: its path comes from the collection it is in.
            let path = match stack.last_mut() {
                None => String::new(),
                Some(Frame::Mapping { path, key }) => {
                    let name = key.take().unwrap_or_default();
                    child_path(path, &name)
                }
                Some(Frame::Sequence { path, next }) => {
                    let item = format!("{path}[{next}]");
                    *next += 1;
                    positions.insert(item.clone(), position);
                    item
                }
            };
            match event {
                Event::MappingStart(..) => stack.push(Frame::Mapping { path, key: None }),
                Event::SequenceStart(..) => stack.push(Frame::Sequence { path, next: 0 }),
                _ => {}
            }
        }
        Locator { positions }
    }

    /// Where `path` is written, or else the nearest enclosing key or item
    /// that is (a missing key is placed at its section); `None` for paths
    /// that are not in the text at all (`(file)`, environment variables).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.positions.get(path) {
                return Some(*position);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Sets the position of each error the text can place.
    pub fn place(&self, errors: &mut [ConfigError]) {
        for error in errors {
            if error.position.is_none() {
                error.position = self.find(&error.path);
            }
        }
    }
}

/// The frame of a collection used as a mapping key: its contents are walked
/// (so the events stay balanced) under a path no reader uses.
fn unnamed_frame(event: &Event) -> Frame {
    let path = UNNAMED_KEY.to_string();
    match event {
        Event::SequenceStart(..) => Frame::Sequence { path, next: 0 },
        _ => Frame::Mapping { path, key: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(locator: &Locator, path: &str) -> Option<(usize, usize)> {
        locator.find(path).map(|p| (p.line, p.column))
    }

    #[test]
    fn block_keys_and_list_items_are_placed() {
        let text = "\
defaults:
  circuit_breaker:
    cooldown: thirty
services:
  - name: api
    endpoints:
      - \"127.0.0.1:9000\"
      - bad
  - name: web
";
        let locator = Locator::new(text);
        assert_eq!(at(&locator, "defaults"), Some((1, 1)));
        assert_eq!(
            at(&locator, "defaults.circuit_breaker.cooldown"),
            Some((3, 5))
        );
        assert_eq!(at(&locator, "services[0]"), Some((5, 5)));
        assert_eq!(at(&locator, "services[0].endpoints[1]"), Some((8, 9)));
        assert_eq!(at(&locator, "services[1].name"), Some((9, 5)));
    }

    #[test]
    fn flow_collections_are_placed_too() {
        let text = "services:\n  - { name: api, circuit_breaker: { cooldown: thirty } }\n";
        let locator = Locator::new(text);
        assert_eq!(at(&locator, "services[0].name"), Some((2, 7)));
        assert_eq!(
            at(&locator, "services[0].circuit_breaker.cooldown"),
            Some((2, 37))
        );
    }

    #[test]
    fn a_missing_key_is_placed_at_its_section_and_outside_paths_nowhere() {
        let locator = Locator::new("services:\n  - endpoints: [\"a:1\"]\n");
        assert_eq!(at(&locator, "services[0].name"), Some((2, 5)));
        assert_eq!(at(&locator, "JWT_SECRET"), None);
        assert_eq!(at(&locator, "(file)"), None);
    }

    #[test]
    fn complex_keys_and_broken_text_do_not_derail_it() {
        let locator = Locator::new("? [a, b]\n: 1\nafter: 2\n");
        assert_eq!(at(&locator, "after"), Some((3, 1)));
        let locator = Locator::new("good: 1\nbad: [\n");
        assert_eq!(at(&locator, "good"), Some((1, 1)));
    }
}
