//! The shape of the code, read from `src/`: which module imports which.
//! Data flows one way (Kafka -> reader -> aggregators -> checkpoint ->
//! stores -> read model -> REST and WebSocket), so the imports have no
//! cycle, between files or between the top-level parts, and the bottom
//! layers import nothing above them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path inside the crate: `["actors", "ws", "session"]`.
type Module = Vec<String>;

/// Every source file as its module path, with its text (tests cut off).
fn modules() -> BTreeMap<Module, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Module = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|last| last == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests may reach anywhere; they sit at the end of a file.
            let tests = ["#[cfg(test)]\nmod tests", "#[cfg(test)]\npub(crate) mod tests"]
                .iter()
                .filter_map(|start| text.find(start))
                .min()
                .unwrap_or(text.len());
            let code = text[..tests].to_owned();
            found.insert(module, code);
        }
    }
    found
}

/// The paths a file names after `crate::` or `super::`, with brace groups
/// expanded one level: `crate::a::{b, c::d}` gives `a::b` and `a::c::d`.
fn referenced(module: &Module, code: &str) -> Vec<Module> {
    let code: String = code.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut paths = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", module[..module.len().saturating_sub(1)].to_vec())] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            let preceded = rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
            rest = &rest[at + prefix.len()..];
            if preceded {
                continue;
            }
            let (path, after) = path_at(rest);
            let mut full = base.clone();
            full.extend(path);
            if let Some(group) = after.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',').map(str::trim).filter(|item| !item.is_empty()) {
                    let mut one = full.clone();
                    one.extend(path_at(item).0);
                    paths.push(one);
                }
            } else {
                paths.push(full);
            }
        }
    }
    paths
}

/// `a::b::c` at the start of `text`, and what follows it (after a `::`).
fn path_at(text: &str) -> (Vec<String>, &str) {
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            return (segments, rest);
        }
        segments.push(rest[..end].to_owned());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => return (segments, rest),
        }
    }
}

/// File -> the other files it imports.
fn file_graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules();
    let resolve = |path: &Module| -> Option<Module> {
        (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|candidate| modules.contains_key(candidate))
    };
    modules
        .iter()
        .map(|(module, code)| {
            let targets = referenced(module, code)
                .iter()
                .filter_map(resolve)
                // A module's own items and its ancestors' (`super::Thing` in a child) are not edges.
                .filter(|target| target != module && !module.starts_with(target))
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// The graph folded onto the first `depth` segments of each module.
fn folded(graph: &BTreeMap<Module, BTreeSet<Module>>, depth: usize) -> BTreeMap<Module, BTreeSet<Module>> {
    let cut = |m: &Module| m[..m.len().min(depth)].to_vec();
    let mut result: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, targets) in graph {
        let entry = result.entry(cut(from)).or_default();
        entry.extend(targets.iter().map(cut).filter(|to| *to != cut(from)));
    }
    result
}

/// One cycle of `graph`, if it has any, as the modules along it.
fn a_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let start = stack.iter().position(|m| m == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if !marks.contains_key(node) {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

fn show(cycle: &[Module]) -> String {
    cycle.iter().map(|m| if m.is_empty() { "crate".to_owned() } else { m.join("::") }).collect::<Vec<_>>().join(" -> ")
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph = file_graph();
    assert!(graph.len() > 40, "the source files were found: {}", graph.len());
    if let Some(cycle) = a_cycle(&graph) {
        panic!("an import cycle between files: {}", show(&cycle));
    }
}

#[test]
fn the_top_level_parts_depend_on_each_other_one_way() {
    let top = folded(&file_graph(), 1);
    if let Some(cycle) = a_cycle(&top) {
        panic!("an import cycle between top-level modules: {}", show(&cycle));
    }
    let imports = |part: &str| -> BTreeSet<String> {
        top.get(&vec![part.to_owned()]).into_iter().flatten().map(|m| m.join("::")).collect()
    };
    assert_eq!(imports("domain"), BTreeSet::new(), "the domain imports nothing of ours");
    assert_eq!(imports("codec"), BTreeSet::from(["domain".to_owned()]), "the codec knows only the domain");
    assert_eq!(imports("config"), BTreeSet::new(), "config imports nothing of ours");
    for part in ["domain", "codec", "storage", "stream", "read", "config", "telemetry", "metrics"] {
        let above: Vec<String> = imports(part)
            .into_iter()
            .filter(|m| ["actors", "http", "startup", "producer"].contains(&m.as_str()))
            .collect();
        assert!(above.is_empty(), "{part} calls up into {above:?}");
    }
    assert!(!imports("actors").contains("http"), "actors know no HTTP");
}

#[test]
fn the_import_reader_sees_cycles_where_there_are_some() {
    // The checks above pass on an acyclic graph; this proves they would not on a cyclic one.
    let module = |name: &str| -> Module { name.split("::").map(str::to_owned).collect() };
    let graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::from([
        (module("a::x"), BTreeSet::from([module("b")])),
        (module("b"), BTreeSet::from([module("a::y")])),
        (module("a::y"), BTreeSet::new()),
    ]);
    assert_eq!(a_cycle(&graph), None, "files: a::x -> b -> a::y is no cycle");
    let cycle = a_cycle(&folded(&graph, 1)).expect("top level: a -> b -> a");
    assert_eq!(show(&cycle), "a -> b -> a");

    let code =
        "use crate::domain::{partial::AggKey, Amount};\nuse super::protocol::Handoff;\n// crate::http::ignored\n";
    let found = referenced(&module("actors::ws::session"), code);
    let found: Vec<String> = found.iter().map(|m| m.join("::")).collect();
    assert_eq!(found, ["domain::partial::AggKey", "domain::Amount", "actors::ws::protocol::Handoff"]);
}

#[test]
fn no_source_file_is_longer_than_500_lines_before_its_tests() {
    let long: Vec<String> = modules()
        .into_iter()
        .filter(|(_, code)| code.lines().count() > 500)
        .map(|(module, code)| format!("{} ({} lines)", show(&[module]), code.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these by idea: {long:?}");
}

#[test]
fn the_architecture_map_names_only_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let map = map.replace("```", "");
    let named: Vec<&str> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.starts_with("src/") || quoted.starts_with("tests/"))
        .collect();
    assert!(named.len() > 10, "the map names the files to open: {named:?}");
    let missing: Vec<&&str> = named.iter().filter(|path| !root.join(path).exists()).collect();
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md names files that do not exist: {missing:?}");
}
