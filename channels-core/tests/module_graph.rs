//! The modules of this crate form a stack: each one uses only modules below it, so a reader
//! can follow the crate from the bottom up (ARCHITECTURE.md draws the stack).
//!
//! These tests read the crate's sources, take every `crate::<module>` path in code (comments
//! and doc links are not dependencies), and fail on a cycle between top-level modules, or when
//! ARCHITECTURE.md's table of the stack and the code disagree. The one cycle the design allows:
//! consumer hooks name the context, and the context may name the consumer back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that may point back up the stack.
const ALLOWED_BACK_EDGES: &[(&str, &str)] = &[("context", "consumer")];

/// Modules the library must not depend on: `testing` is built only with its cargo feature.
const TEST_ONLY: &[&str] = &["testing"];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the source directory") {
            let path = entry.expect("read a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to (`src/layer/json.rs` is in `layer`); `None` for
/// `lib.rs`, the crate root, which only declares and re-exports.
fn top_level_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(stem) => Some(stem.to_owned()),
        None => Some(first.to_owned()),
    }
}

/// The source with comments (doc comments included) and the contents of string and character
/// literals blanked out, so that only code is searched.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            code.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !preceded_by_identifier(&chars, i) {
            // A raw string: r"...", r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                code.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            code.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            code.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '"'), or a lifetime ('a), which is code.
            if next == Some('\\') {
                // Past the quote, the backslash and the escaped character (which may be a quote).
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                code.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                code.push_str("' '");
            } else {
                code.push(c);
                i += 1;
            }
        } else {
            code.push(c);
            i += 1;
        }
    }
    code
}

fn preceded_by_identifier(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn identifier_at(code: &str) -> &str {
    let end = code.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(code.len());
    &code[..end]
}

/// The first segment of every path that starts with `crate::` (`$crate::` included), and of
/// every item of a `crate::{a::X, b}` group.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded = rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded {
            continue;
        }
        let after = rest.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (offset, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        item_start = false;
                        found.insert(identifier_at(&group[offset..]).to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(identifier_at(after).to_owned());
        }
    }
    found
}

/// Which top-level modules each top-level module uses, and the modules that exist.
fn module_graph() -> Graph {
    let src = source_dir();
    let files = rust_files(&src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_level_module(&src, f)).collect();
    let mut graph: Graph = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in &files {
        let Some(module) = top_level_module(&src, file) else { continue };
        let source = std::fs::read_to_string(file).expect("read a source file");
        for used in crate_paths(&code_only(&source)) {
            if used != module && modules.contains(&used) {
                graph.get_mut(&module).expect("every module is in the graph").insert(used);
            }
        }
    }
    graph
}

/// A cycle of `graph` as a path that starts and ends at the same module, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unseen,
        OnPath,
        Done,
    }
    fn visit(module: &str, graph: &Graph, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> bool {
        marks.insert(module.to_owned(), Mark::OnPath);
        path.push(module.to_owned());
        for used in graph.get(module).into_iter().flatten() {
            match marks.get(used).copied().unwrap_or(Mark::Unseen) {
                Mark::OnPath => {
                    let start = path.iter().position(|m| m == used).expect("on the path");
                    path.drain(..start);
                    path.push(used.clone());
                    return true;
                }
                Mark::Unseen if visit(used, graph, marks, path) => return true,
                _ => {}
            }
        }
        path.pop();
        marks.insert(module.to_owned(), Mark::Done);
        false
    }
    let mut marks = BTreeMap::new();
    for module in graph.keys() {
        let mut path = Vec::new();
        if marks.get(module).copied().unwrap_or(Mark::Unseen) == Mark::Unseen
            && visit(module, graph, &mut marks, &mut path)
        {
            return Some(path);
        }
    }
    None
}

fn without_allowed_back_edges(mut graph: Graph) -> Graph {
    for (from, to) in ALLOWED_BACK_EDGES {
        if let Some(used) = graph.get_mut(*from) {
            used.remove(*to);
        }
    }
    graph
}

#[test]
fn modules_form_a_stack_without_cycles() {
    let graph = module_graph();
    if let Some(cycle) = find_cycle(&without_allowed_back_edges(graph.clone())) {
        panic!("module cycle: {}\nthe graph: {graph:#?}", cycle.join(" -> "));
    }
}

/// The stack ARCHITECTURE.md draws: its rows of modules, bottom first.
fn documented_stack() -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("ARCHITECTURE.md at the workspace root");
    let mut rows: Vec<(u32, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| 3 hooks | `consumer`, `guarded` | ... |`: a row of the module table.
        let [_, layer, modules, ..] = cells.as_slice() else { continue };
        let Some(number) = layer.split_whitespace().next().and_then(|n| n.parse().ok()) else { continue };
        let names = modules.split(',').map(|name| name.trim().trim_matches('`').to_owned()).collect();
        rows.push((number, names));
    }
    rows.sort_by_key(|(number, _)| *number);
    rows.into_iter().map(|(_, names)| names).collect()
}

#[test]
fn architecture_md_lists_every_module_in_an_order_the_code_keeps() {
    let graph = module_graph();
    let order: Vec<String> = documented_stack().into_iter().flatten().collect();
    let documented: BTreeSet<&String> = order.iter().collect();
    let actual: BTreeSet<&String> = graph.keys().collect();
    assert_eq!(documented, actual, "ARCHITECTURE.md's module table and the modules of src/ differ");
    let position = |module: &str| order.iter().position(|m| m == module).expect("documented");
    for (module, used) in &without_allowed_back_edges(graph.clone()) {
        for below in used {
            assert!(
                position(below) < position(module),
                "{module} uses {below}, which ARCHITECTURE.md puts after it in the stack"
            );
        }
    }
}

#[test]
fn no_library_module_depends_on_the_testing_module() {
    let graph = module_graph();
    for (module, used) in &graph {
        if TEST_ONLY.contains(&module.as_str()) {
            continue;
        }
        for test_only in TEST_ONLY {
            assert!(!used.contains(*test_only), "{module} uses {test_only}, which is built only for tests");
        }
    }
}

#[test]
fn no_library_doc_links_to_the_testing_module() {
    // A doc link to a module left out of the build is a broken link.
    let src = source_dir();
    for file in rust_files(&src) {
        let module = top_level_module(&src, &file);
        if module.as_deref().is_some_and(|m| TEST_ONLY.contains(&m)) {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("read a source file");
        for test_only in TEST_ONLY {
            assert!(!source.contains(&format!("crate::{test_only}")), "{} links to crate::{test_only}", file.display());
        }
    }
}

#[test]
fn the_reader_finds_code_paths_but_not_comments_or_strings() {
    let code = code_only(
        "use crate::a::X;\n/// see [`crate::b`]\nlet s = \"crate::c\"; let t = r#\"crate::d\"#;\n\
         let q = '\"'; let r = '\\''; fn f<'a>() {} use crate::{e::Y, f};\n/* crate::g */ $crate::h!();",
    );
    let found = crate_paths(&code);
    assert_eq!(found, ["a", "e", "f", "h"].into_iter().map(String::from).collect());
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph: Graph = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
        .into_iter()
        .map(|(m, used)| (m.to_owned(), used.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
