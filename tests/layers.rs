//! The module layering of `layers.txt` holds: every top-level module is listed, no module uses a
//! module of a higher layer, and no modules use each other in a cycle.
//!
//! A dependency is any `crate::NAME` path (including `use crate::{a, b}` groups) in a file of
//! another top-level module; comments and `#[cfg(test)]` modules are skipped. The same reading as
//! `python3 ../shared/tools/layers.py src --layers layers.txt`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// (from module, to module) -> the places that make the edge.
type Edges = BTreeMap<(String, String), Vec<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn top_module(src: &Path, f: &Path) -> Option<String> {
    let first = f.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    if matches!(name, "bin" | "main.rs" | "lib.rs") {
        return None;
    }
    Some(name.trim_end_matches(".rs").to_owned())
}

/// Drop `//` comments and `#[cfg(test)] mod x { … }` blocks.
fn strip(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = rest[i + "#[cfg(test)]".len()..].trim_start();
        let after = after
            .strip_prefix("pub(crate)")
            .or_else(|| after.strip_prefix("pub"))
            .unwrap_or(after)
            .trim_start();
        let is_mod = after.starts_with("mod ")
            && after
                .find(['{', ';'])
                .is_some_and(|j| after.as_bytes()[j] == b'{');
        if !is_mod {
            out.push_str("#[cfg(test)]");
            rest = &rest[i + "#[cfg(test)]".len()..];
            continue;
        }
        let open = after.find('{').unwrap_or(0);
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module names a text refers to as `crate::NAME` or inside `crate::{…}`.
fn crate_refs(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        if text[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        let rest = &text[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    c => item.push(c),
                }
            }
            items.push(item);
            for it in items {
                let name: String = it.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !name.is_empty() {
                    out.push((name, line));
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                out.push((name, line));
            }
        }
    }
    out
}

fn edges(src: &Path) -> (BTreeSet<String>, Edges) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut edges: Edges = BTreeMap::new();
    for f in &files {
        if let Some(m) = top_module(src, f) {
            modules.insert(m);
        }
    }
    for f in &files {
        let Some(m) = top_module(src, f) else {
            continue;
        };
        let text = strip(&fs::read_to_string(f).unwrap_or_default());
        for (name, line) in crate_refs(&text) {
            if name != m && name != "self" && modules.contains(&name) {
                edges
                    .entry((m.clone(), name))
                    .or_default()
                    .push(format!("{}:{line}", f.display()));
            }
        }
    }
    (modules, edges)
}

/// Every problem: unlisted modules, upward uses, cycles.
fn check(src: &Path, layers_text: &str) -> Vec<String> {
    let mut layer_of = BTreeMap::new();
    for (i, line) in layers_text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        for m in line.split_whitespace() {
            layer_of.insert(m.to_owned(), i);
        }
    }
    let (modules, edges) = edges(src);
    let mut problems = Vec::new();
    for m in &modules {
        if !layer_of.contains_key(m) {
            problems.push(format!("module {m} is not in the layers file"));
        }
    }
    for ((a, b), at) in &edges {
        if let (Some(la), Some(lb)) = (layer_of.get(a), layer_of.get(b)) {
            if lb > la {
                problems.push(format!("upward use {a} -> {b}: {}", at.join(", ")));
            }
        }
    }
    // Cycles: a module that can reach itself.
    let adj: BTreeMap<&str, Vec<&str>> = edges.keys().fold(BTreeMap::new(), |mut m, (a, b)| {
        m.entry(a.as_str())
            .or_insert_with(Vec::new)
            .push(b.as_str());
        m
    });
    for start in &modules {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = adj.get(start.as_str()).cloned().unwrap_or_default();
        while let Some(n) = stack.pop() {
            if n == start {
                problems.push(format!("{start} is in a cycle"));
                break;
            }
            if seen.insert(n) {
                stack.extend(adj.get(n).cloned().unwrap_or_default());
            }
        }
    }
    problems
}

#[test]
fn modules_keep_their_layers_and_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers =
        fs::read_to_string(root.join("layers.txt")).unwrap_or_else(|e| panic!("layers.txt: {e}"));
    let problems = check(&root.join("src"), &layers);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_check_finds_an_upward_use_a_cycle_and_an_unlisted_module() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("high")).unwrap_or_else(|e| panic!("{e}"));
    let write = |p: &str, t: &str| {
        fs::write(src.join(p), t).unwrap_or_else(|e| panic!("{e}"));
    };
    write("low.rs", "use crate::{high::Thing, other};\n");
    write("high/mod.rs", "// crate::ignored\nuse crate::low::X;\n");
    write(
        "other.rs",
        "#[cfg(test)]\nmod tests {\n    use crate::high::Y;\n}\n",
    );
    write("stray.rs", "");
    let problems = check(&src, "low other\nhigh\n");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("upward use low -> high")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p == "low is in a cycle"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("module stray")),
        "{problems:?}"
    );
    // The test module's use of `high` and the comment do not count.
    assert!(
        !problems.iter().any(|p| p.contains("other -> high")),
        "{problems:?}"
    );
}
