//! The module graph has no import circle.
//!
//! eddy is layered: config, error and metrics at the bottom; the upstream
//! side (pool, connector) below the proxy; the proxy below the listener;
//! the app on top (docs/design.md, "Layers"). A circle between modules
//! means a lower layer reaches back up, and then no part can be read,
//! tested or changed on its own. This test reads the `crate::` and
//! `super::` paths of every file under `src/` and fails on any circle
//! between modules, naming the files that close it.
//!
//! A node is a module two levels deep at most (`upstream::pool` with all
//! its files, `proxy`, `metrics`): what happens inside one of those is its
//! own business.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/upstream/pool/lease.rs` is
/// `[upstream, pool, lease]`, `src/upstream/pool/mod.rs` is
/// `[upstream, pool]`; the crate roots are empty.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    parts
}

fn node(path: &[String]) -> String {
    path.iter().take(2).cloned().collect::<Vec<_>>().join("::")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a line names after `crate::` or `super::` (also inside one
/// level of `{...}` groups), relative to the crate root.
fn paths_in(line: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(pos) = rest
        .find("crate::")
        .into_iter()
        .chain(rest.find("super::"))
        .min()
    {
        let before = rest[..pos].chars().next_back();
        let starts_word = before.is_none_or(|c| !is_ident(c) && c != ':');
        let tail = &rest[pos..];
        // `super` is the module's parent: `a` in `a/b.rs` (module
        // `a::b`), the root in `a/mod.rs` (module `a`).
        let (mut base, mut tail) = if let Some(t) = tail.strip_prefix("crate::") {
            (Vec::new(), t)
        } else {
            let mut b = here.to_vec();
            let mut t = tail;
            while let Some(next) = t.strip_prefix("super::") {
                b.pop();
                t = next;
            }
            (b, t)
        };
        rest = &rest[pos + 1..];
        if !starts_word {
            continue;
        }
        let mut segs = Vec::new();
        loop {
            let ident: String = tail.chars().take_while(|c| is_ident(*c)).collect();
            if ident.is_empty() {
                break;
            }
            tail = &tail[ident.len()..];
            segs.push(ident);
            match tail.strip_prefix("::") {
                Some(t) => tail = t,
                None => break,
            }
        }
        if let Some(group) = tail.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let first: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !first.is_empty() {
                    let mut p = base.clone();
                    p.extend(segs.iter().cloned());
                    p.push(first);
                    found.push(p);
                }
            }
        }
        base.extend(segs);
        found.push(base);
    }
    found
}

#[test]
fn the_module_graph_has_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    // Edges between nodes, with the files that make them.
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let here = module_of(&src, file);
        if here.is_empty() {
            continue;
        }
        let from = node(&here);
        let text = std::fs::read_to_string(file).expect("read source");
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for path in paths_in(code, &here) {
                // The longest prefix that is a module of ours.
                let Some(target) = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| modules.contains(p))
                else {
                    continue;
                };
                let to = node(&target);
                if to != from && !to.is_empty() {
                    let rel = file.strip_prefix(&src).unwrap_or(file);
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_default()
                        .insert(rel.display().to_string());
                }
            }
        }
    }
    // Any node that can reach itself closes a circle.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).map(|m| m.keys()).into_iter().flatten() {
                if next == start {
                    let mut circle = trail.clone();
                    circle.push(next.clone());
                    circles.push(circle);
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    let described: Vec<String> = circles
        .iter()
        .map(|c| {
            c.windows(2)
                .map(|w| {
                    let files = &edges[&w[0]][&w[1]];
                    format!(
                        "{} -> {} ({})",
                        w[0],
                        w[1],
                        files.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    assert!(
        described.is_empty(),
        "import circles:\n{}",
        described.join("\n")
    );
    // The graph was read at all: the proxy uses the upstream side.
    assert!(edges
        .get("proxy")
        .is_some_and(|m| m.keys().any(|k| k.starts_with("upstream"))));
}
