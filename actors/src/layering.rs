//! Test only: enforces the layering of docs/architecture.md ("Layering") on this crate's
//! sources, so that an import against it cannot come back unnoticed.
//!
//! The table in the document is the rule: this test reads it, reads every source file of
//! `actors/src/` that is not test-only (a module declared under `#[cfg(test)]`, and the
//! `#[cfg(test)] mod … { … }` block that ends a file), collects every `crate::`, `super::` and
//! `self::` path in its code (a `use` tree included), resolves it to the module it names, and
//! checks that (1) every module has a layer, (2) no module imports a module of a higher layer,
//! (3) no import circle exists among the table's modules, not even within one layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path inside the crate (`[]` is the crate root).
type ModPath = Vec<String>;

/// The layering table: module (an entry of the table) → layer.
type Table = BTreeMap<ModPath, u32>;

/// Reads the table of the "Layering" section: rows `| <layer> | `a`, `b::c` | … |`.
fn parse_table(doc: &str) -> Table {
    let mut table = Table::new();
    let Some(start) = doc.find("\n## Layering") else { return table };
    let section = &doc[start + 1..];
    let section = section[3..].find("\n## ").map_or(section, |end| &section[..end + 3]);
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else { continue };
        let Ok(layer) = layer.parse::<u32>() else { continue };
        for name in modules.split('`').skip(1).step_by(2) {
            table.insert(name.split("::").map(str::to_string).collect(), layer);
        }
    }
    table
}

/// The table entry a module belongs to: the longest entry that is a prefix of its path.
fn unit_of<'a>(table: &'a Table, module: &[String]) -> Option<&'a ModPath> {
    table.keys().filter(|entry| module.starts_with(entry)).max_by_key(|entry| entry.len())
}

/// The source without comments, without string literals' contents and without the
/// `#[cfg(test)] mod … {` block (and everything after it: tests end a file by convention).
fn code_of(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_string = false;
                    code.push('"');
                }
                '\n' => code.push('\n'),
                _ => {}
            }
            continue;
        }
        let next = chars.peek().copied();
        let closes_char = chars.clone().nth(1) == Some('\'');
        match (c, next) {
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        code.push('\n');
                        break;
                    }
                }
            }
            ('"', _) => {
                in_string = true;
                code.push('"');
            }
            // A character literal ('"', '\'', 'x'); a lifetime ('a) is kept as it is.
            ('\'', Some('\\')) => {
                chars.next();
                chars.next();
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
            }
            ('\'', Some(_)) if closes_char => {
                chars.next();
                chars.next();
            }
            _ => code.push(c),
        }
    }
    let mut kept = String::with_capacity(code.len());
    let mut lines = code.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let next = lines.peek().map_or("", |l| l.trim());
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// The modules a file declares under `#[cfg(test)]` (`#[cfg(test)] mod name;`).
fn test_children(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod ").and_then(|r| r.strip_suffix(';')))
        .map(|name| name.trim().to_string())
        .collect()
}

/// Parses a use tree (`a::b`, `a::{b, c::d}`, `a::*`) from `chars[*i..]`; every path it names.
fn parse_tree(chars: &[char], i: &mut usize) -> Vec<ModPath> {
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    skip_ws(i);
    if chars.get(*i) == Some(&'{') {
        *i += 1;
        let mut all = Vec::new();
        loop {
            skip_ws(i);
            match chars.get(*i) {
                None => return all,
                Some('}') => {
                    *i += 1;
                    return all;
                }
                Some(',') => *i += 1,
                Some(_) => {
                    let before = *i;
                    all.extend(parse_tree(chars, i));
                    // Skip what follows a path in a group (`as name`) up to `,` or `}`.
                    while chars.get(*i).is_some_and(|c| *c != ',' && *c != '}') {
                        *i += 1;
                    }
                    if *i == before {
                        *i += 1;
                    }
                }
            }
        }
    }
    let start = *i;
    while chars.get(*i).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
        *i += 1;
    }
    let ident: String = chars[start..*i].iter().collect();
    if ident.is_empty() || ident == "self" {
        return vec![Vec::new()];
    }
    if chars.get(*i) == Some(&':') && chars.get(*i + 1) == Some(&':') {
        *i += 2;
        let mut rest = parse_tree(chars, i);
        for path in &mut rest {
            path.insert(0, ident.clone());
        }
        rest
    } else {
        vec![vec![ident]]
    }
}

/// Every path of `code` that starts with `crate::`, `super::` or `self::`, made absolute from
/// `module`.
fn paths_in(code: &str, module: &[String]) -> Vec<ModPath> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        let anchor = ["crate::", "super::", "self::"].into_iter().find(|a| rest.starts_with(a));
        let Some(anchor) = anchor.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        i += anchor.len();
        let mut base: ModPath = match anchor {
            "crate::" => Vec::new(),
            "super::" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => module.to_vec(),
        };
        for mut path in parse_tree(&chars, &mut i) {
            let mut base = base.clone();
            while path.first().is_some_and(|s| s == "super") {
                path.remove(0);
                base.pop();
            }
            base.extend(path);
            out.push(base);
        }
        base.clear();
    }
    out
}

/// One import: `from` (a file's module) names `to` (a module) at `path`.
#[derive(Debug)]
struct Import {
    from: ModPath,
    to: ModPath,
}

/// The test-only modules of `files`: declared under `#[cfg(test)]`, and their children.
fn test_only(files: &BTreeMap<ModPath, String>) -> BTreeSet<ModPath> {
    let declared: BTreeSet<ModPath> = files
        .iter()
        .flat_map(|(module, source)| {
            test_children(source).into_iter().map(move |child| {
                let mut path = module.clone();
                path.push(child);
                path
            })
        })
        .collect();
    files.keys().filter(|m| declared.iter().any(|t| m.starts_with(t))).cloned().collect()
}

/// Every import between modules of `files` (module path → source), test-only modules left out.
fn imports(files: &BTreeMap<ModPath, String>) -> Vec<Import> {
    let test_only = test_only(files);
    let mut out = Vec::new();
    for (module, source) in files {
        if test_only.contains(module) {
            continue;
        }
        for path in paths_in(&code_of(source), module) {
            // The module it names: the longest prefix of the path that is a file's module.
            let to = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|prefix| files.contains_key(prefix))
                .unwrap_or_default();
            if !to.is_empty() && to != *module {
                out.push(Import { from: module.clone(), to });
            }
        }
    }
    out
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Checks the three rules; every violation, one line each.
fn check(table: &Table, files: &BTreeMap<ModPath, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let test_only = test_only(files);
    for module in files.keys().filter(|m| !m.is_empty() && !test_only.contains(*m)) {
        if unit_of(table, module).is_none() {
            problems.push(format!("`{}` has no layer: add it to the table", show(module)));
        }
    }
    let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for import in imports(files) {
        let (Some(from), Some(to)) = (unit_of(table, &import.from), unit_of(table, &import.to))
        else {
            continue;
        };
        if from == to {
            continue;
        }
        let (lf, lt) = (table[from], table[to]);
        if lt > lf {
            problems.push(format!(
                "`{}` (layer {lf}) imports `{}` (layer {lt}): a layer imports only its own and \
                 lower layers",
                show(&import.from),
                show(&import.to)
            ));
        }
        graph.entry(from.clone()).or_default().insert(to.clone());
    }
    for cycle in cycles(&graph) {
        let names: Vec<String> = cycle.iter().map(|m| show(m)).collect();
        problems.push(format!("import circle: {}", names.join(" → ")));
    }
    problems.sort();
    problems.dedup();
    problems
}

/// One circle per strongly connected component of more than one module, as a path that
/// returns to its start.
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    let reach = |from: &ModPath| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut reported: BTreeSet<ModPath> = BTreeSet::new();
    let mut out = Vec::new();
    for start in graph.keys() {
        if reported.contains(start) || !reach(start).contains(start) {
            continue;
        }
        // Walk back to `start` through modules that reach it.
        let mut path = vec![start.clone()];
        let mut at = start.clone();
        while let Some(next) = graph
            .get(&at)
            .into_iter()
            .flatten()
            .find(|n| *n == start || (!path.contains(n) && reach(n).contains(start)))
        {
            path.push(next.clone());
            if next == start {
                break;
            }
            at = next.clone();
        }
        reported.extend(path.iter().cloned());
        out.push(path);
    }
    out
}

/// Every `.rs` file under `dir`, by module path.
fn read_sources(dir: &Path) -> BTreeMap<ModPath, String> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read the source directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(dir).expect("under the source directory");
            let mut module: ModPath =
                rel.with_extension("").iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|s| s == "mod" || s == "lib") {
                module.pop();
            }
            let source = std::fs::read_to_string(&path).expect("read a source file");
            files.insert(module, source);
        }
    }
    files
}

const ARCHITECTURE: &str = include_str!("../../docs/architecture.md");

fn sources() -> BTreeMap<ModPath, String> {
    read_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn m(s: &str) -> ModPath {
    s.split("::").map(str::to_string).collect()
}

#[test]
fn the_documented_table_lists_the_layers() {
    let table = parse_table(ARCHITECTURE);
    assert_eq!(table.get(&m("service")), Some(&5), "{table:?}");
    assert_eq!(table.get(&m("messages")), Some(&0), "{table:?}");
    assert!(table.len() > 20, "{table:?}");
}

#[test]
fn every_module_of_the_crate_has_a_layer_none_imports_upward_and_none_in_a_circle() {
    let problems = check(&parse_table(ARCHITECTURE), &sources());
    assert!(problems.is_empty(), "docs/architecture.md, \"Layering\":\n{}", problems.join("\n"));
}

fn fixture(files: &[(&str, &str)]) -> BTreeMap<ModPath, String> {
    files.iter().map(|(module, source)| (m(module), source.to_string())).collect()
}

const TABLE: &str = "\n## Layering\n| layer | modules |\n|---|---|\n| 0 | `low`, `other` | |\n\
                     | 1 | `role`, `role::machine` | |\n| 2 | `top` | |\n## Next\n| 9 | `late` |\n";

#[test]
fn an_import_of_a_higher_layer_is_reported() {
    let files = fixture(&[("low", "use crate::top::Thing;\n"), ("top", "")]);
    let problems = check(&parse_table(TABLE), &files);
    assert_eq!(
        problems,
        ["`low` (layer 0) imports `top` (layer 2): a layer imports only its own and lower layers"]
    );
}

#[test]
fn an_import_inside_a_use_group_is_seen() {
    let files = fixture(&[
        ("low", "use crate::{other::X, role::{machine::Y}};\n"),
        ("other", ""),
        ("role", ""),
        ("role::machine", ""),
    ]);
    let problems = check(&parse_table(TABLE), &files);
    assert_eq!(
        problems,
        ["`low` (layer 0) imports `role::machine` (layer 1): a layer imports only its own \
             and lower layers"]
    );
}

#[test]
fn a_circle_within_one_layer_is_reported() {
    let files = fixture(&[
        ("role", "pub fn f() { crate::role::machine::g() }\n"),
        ("role::machine", "use super::f;\n"),
    ]);
    let problems = check(&parse_table(TABLE), &files);
    assert_eq!(problems, ["import circle: role → role::machine → role"]);
}

#[test]
fn a_module_without_a_layer_is_reported() {
    let problems = check(&parse_table(TABLE), &fixture(&[("stray", "")]));
    assert_eq!(problems, ["`stray` has no layer: add it to the table"]);
}

#[test]
fn test_code_comments_and_strings_are_not_imports() {
    let low = "// crate::top::X\nconst S: &str = \"crate::top\";\nconst C: char = '\"';\n\
               fn f<'a>(x: &'a str) -> &'a str { x }\n#[cfg(test)]\nmod helper;\n\
               #[cfg(test)]\nmod tests {\n    use crate::top::X;\n}\n";
    let files = fixture(&[("low", low), ("low::helper", "use crate::top::Y;\n"), ("top", "")]);
    assert_eq!(check(&parse_table(TABLE), &files), Vec::<String>::new());
}

#[test]
fn a_table_row_after_the_section_is_not_part_of_it() {
    assert_eq!(parse_table(TABLE).get(&m("late")), None);
}
