//! Reading policy from files: every YAML document of every file given (directories are walked
//! for `*.yaml` and `*.yml`), each remembered with its file and first line, so that a problem
//! can say where it is.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

/// One YAML document.
#[derive(Clone, Debug)]
pub struct Doc {
    pub file: PathBuf,
    /// The document's first line (1-based) in `file`.
    pub line: usize,
    /// The document's own text, for finding the line of a field.
    pub text: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }

    /// Whether this is one of ours (`portcullis.dev/...`).
    pub fn is_policy(&self) -> bool {
        self.value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{}/", portcullis_api::GROUP)))
    }

    /// `file:line` of the field at `path` (`spec.listeners[1].port`): the first line, from
    /// the document's start, that holds each key of the path in turn; the document's first
    /// line when none does. Flow-style YAML (`{a: b}`) is found as well as block style.
    pub fn at(&self, path: &str) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        let mut line = 0;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            let (key, index) = match seg.split_once('[') {
                Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (seg, None),
            };
            let hit = lines.iter().enumerate().skip(line).find(|(_, l)| {
                l.match_indices(&format!("{key}:")).any(|(i, _)| {
                    i == 0
                        || l[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-'))
                })
            });
            let Some((i, l)) = hit else { break };
            line = i;
            // A block list's n-th item: the n-th `- ` line at the first item's indentation.
            let flow = !l
                .split_once(&format!("{key}:"))
                .is_some_and(|(_, rest)| rest.trim().is_empty());
            if let (Some(n), false) = (index, flow) {
                let items: Vec<usize> = lines
                    .iter()
                    .enumerate()
                    .skip(i + 1)
                    .take_while(|(_, l)| l.trim().is_empty() || indent(l) >= indent(lines[i]))
                    .filter(|(_, l)| l.trim_start().starts_with("- "))
                    .map(|(j, _)| j)
                    .collect();
                let first = items.first().map(|j| indent(lines[*j]));
                if let Some(j) = items
                    .iter()
                    .filter(|j| Some(indent(lines[**j])) == first)
                    .nth(n)
                {
                    line = *j;
                }
            }
        }
        format!("{}:{}", self.file.display(), self.line + line)
    }

    /// `file:line` of the first line below the document's first that mentions `name` as a
    /// whole word (a value, not a part of one).
    pub fn line_naming(&self, name: &str) -> Option<String> {
        let word = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
        let (i, _) = self.text.lines().enumerate().skip(1).find(|(_, l)| {
            l.match_indices(name).any(|(at, _)| {
                !l[..at].chars().next_back().is_some_and(word)
                    && !l[at + name.len()..].chars().next().is_some_and(word)
            })
        })?;
        Some(format!("{}:{}", self.file.display(), self.line + i))
    }

    /// `file:line` of the document.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// Every document in `paths`, files in the order given and directories sorted by name.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let mut docs = Vec::new();
    for f in files {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
        };
        docs.extend(split(&f, &text)?);
    }
    Ok(docs)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if p.as_os_str() == "-" || p.is_file() {
        out.push(p.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("reading {}", p.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(e);
        }
    }
    Ok(())
}

/// The documents of one file, split at `---` lines; empty documents and comments alone are
/// skipped, and a `List` (`kubectl get -o yaml`) is taken item by item.
pub fn split(file: &Path, text: &str) -> anyhow::Result<Vec<Doc>> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    let flush = |start: usize, body: &str, docs: &mut Vec<Doc>| -> anyhow::Result<()> {
        let value: Value = serde_yaml_ng::from_str(body)
            .with_context(|| format!("{}:{start}: not YAML", file.display()))?;
        // The document's own first line: past leading blank and comment lines.
        let skip = body
            .lines()
            .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            .count();
        match value {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in o
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    docs.push(Doc {
                        file: file.to_owned(),
                        line: start + skip,
                        text: body.to_owned(),
                        value: item.clone(),
                    });
                }
            }
            value => docs.push(Doc {
                file: file.to_owned(),
                line: start + skip,
                text: body.lines().skip(skip).collect::<Vec<_>>().join("\n"),
                value,
            }),
        }
        Ok(())
    };
    for (i, l) in text.lines().enumerate() {
        if l == "---" || l.starts_with("--- ") || l.starts_with("---#") {
            flush(start, &current, &mut docs)?;
            current.clear();
            start = i + 2;
        } else {
            current.push_str(l);
            current.push('\n');
        }
    }
    flush(start, &current, &mut docs)?;
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_fields_are_found_at_their_lines() {
        let text = "# zones\n---\nkind: A\nmetadata:\n  name: a\n---\n\n# b\nkind: B\nmetadata: {name: b}\nspec:\n  listeners:\n  - name: x\n    port: 21\n";
        let docs = split(Path::new("f.yaml"), text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].name(), docs[0].line), ("a", 3));
        assert_eq!((docs[1].name(), docs[1].line), ("b", 9));
        assert_eq!(docs[1].at("spec.listeners[0].port"), "f.yaml:14");
        assert_eq!(docs[1].at("spec.listeners[0]"), "f.yaml:13");
        assert_eq!(docs[1].at("metadata.name"), "f.yaml:10");
        assert_eq!(docs[1].at("spec.nothing"), "f.yaml:11");
    }
}
