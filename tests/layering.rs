//! The layering docs/architecture.md promises, checked on the source: protobuf stays in the
//! front door (`server/`, and the binary's CLI and tools), and no two files or top-level
//! folders of the library import each other, directly or through others.
//!
//! An import is any `crate::a::b` / `super::x` path outside a file's `#[cfg(test)]` tail and
//! outside `pub use` re-exports (a folder's `mod.rs` re-exporting its children is not a use).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Library files (not the binary's `main.rs`, `cli/`, `tools/`), as module paths like
/// `service::classify`, with their text up to the first `#[cfg(test)]`.
fn library_files() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = src();
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().with_extension("");
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(parts[0].as_str(), "main" | "cli" | "tools") {
            continue;
        }
        let name = parts.last().unwrap();
        if name == "tests" || name.ends_with("_tests") {
            continue; // test-only modules
        }
        let mut module: Vec<&str> = parts.iter().map(String::as_str).collect();
        if matches!(*module.last().unwrap(), "mod" | "lib") {
            module.pop();
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap().to_string();
        out.insert(module.join("::"), text);
    }
    out
}

/// The files each file imports (by module path), resolved to the deepest module that exists.
fn import_graph(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let path = Regex::new(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let group = Regex::new(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}").unwrap();
    let mut graph = BTreeMap::new();
    for (module, text) in files {
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = if module.is_empty() {
                vec![]
            } else {
                module.split("::").collect()
            };
            // `super` in a folder's mod.rs is the folder's parent; in a file, the file's folder.
            p.pop();
            p
        };
        let mut deps = BTreeSet::new();
        let mut add = |root: &str, rest: &str| {
            let mut segs: Vec<String> = if root == "crate" {
                vec![]
            } else {
                parent.iter().map(|s| s.to_string()).collect()
            };
            segs.extend(rest.split("::").filter(|s| !s.is_empty()).map(String::from));
            while !segs.is_empty() {
                let cand = segs.join("::");
                if files.contains_key(&cand) {
                    if &cand != module {
                        deps.insert(cand);
                    }
                    return;
                }
                segs.pop();
            }
        };
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("//") || t.starts_with("pub use") || t.starts_with("pub mod") {
                continue;
            }
            for c in group.captures_iter(line) {
                for item in c[3].split(',') {
                    let item = item.split_whitespace().next().unwrap_or("");
                    let item = if item == "self" { "" } else { item };
                    add(&c[1], &format!("{}::{item}", &c[2]));
                }
            }
            for c in path.captures_iter(line) {
                add(&c[1], &c[2]);
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A cycle through `start`, if any (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == d).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(d, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn protobuf_stays_in_the_front_door() {
    let pb = Regex::new(r"\bpb::|crate::pb\b").unwrap();
    let offenders: Vec<String> = library_files()
        .into_iter()
        .filter(|(m, _)| !m.is_empty() && top(m) != "server")
        .filter(|(_, text)| {
            text.lines()
                .any(|l| !l.trim_start().starts_with("//") && pb.is_match(l))
        })
        .map(|(m, _)| m)
        .collect();
    assert!(
        offenders.is_empty(),
        "protobuf used below server/: {offenders:?}"
    );
}

#[test]
fn no_file_imports_itself_through_others() {
    let files = library_files();
    let graph = import_graph(&files);
    // Sanity: the graph sees real edges.
    assert!(
        graph["service::classify"].contains("service"),
        "{:?}",
        graph["service::classify"]
    );
    assert!(graph["server::grpc"].contains("server::convert"));
    if let Some(c) = find_cycle(&graph) {
        panic!("import cycle between files: {}", c.join(" -> "));
    }
}

#[test]
fn no_top_level_folder_imports_itself_through_others() {
    let files = library_files();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in import_graph(&files) {
        if m.is_empty() {
            continue; // lib.rs declares the modules
        }
        let entry = folders.entry(top(&m).to_string()).or_default();
        for d in deps {
            if top(&d) != top(&m) && !d.is_empty() {
                entry.insert(top(&d).to_string());
            }
        }
    }
    if let Some(c) = find_cycle(&folders) {
        panic!("import cycle between top-level modules: {}", c.join(" -> "));
    }
    // The front door and the wiring sit on top: nothing below uses them.
    for (m, deps) in &folders {
        if m != "app" {
            assert!(!deps.contains("app"), "{m} uses app");
        }
        if m != "app" && m != "server" {
            assert!(!deps.contains("server"), "{m} uses server");
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}
