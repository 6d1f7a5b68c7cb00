//! No library crate has an import cycle between its modules: reading the sources, module `a`
//! depends on `b` when its code (comments and `#[cfg(test)]` parts left out) names `crate::b` or
//! `super::b`; a module and the modules inside it do not count as a cycle.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`sd::unet`; "" for the crate root) to its source text.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    parts.pop();
                }
                out.insert(parts.join("::"), std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The modules each module names.
fn graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut g = BTreeMap::new();
    for (name, text) in mods {
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: Vec<&str> = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
        let code = code.join("\n");
        let mut deps = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let mut path: Vec<String> = Vec::new();
            let mut r = rest;
            loop {
                let id = ident(r);
                if id.is_empty() {
                    break;
                }
                r = &r[id.len()..];
                path.push(id);
                match r.strip_prefix("::") {
                    Some(next) => r = next,
                    None => break,
                }
            }
            // The longest prefix that is a module.
            if let Some(m) = (1..=path.len()).rev().map(|k| path[..k].join("::")).find(|m| mods.contains_key(m)) {
                deps.insert(m);
            }
        }
        for (i, _) in code.match_indices("super::") {
            let id = ident(&code[i + "super::".len()..]);
            let parent = name.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default();
            let m = if parent.is_empty() { id } else { format!("{parent}::{id}") };
            if mods.contains_key(&m) {
                deps.insert(m);
            }
        }
        // A module and its own parents or children are one unit here.
        deps.retain(|d| d != name && !d.starts_with(&format!("{name}::")) && !name.starts_with(&format!("{d}::")));
        deps.remove("");
        g.insert(name.clone(), deps);
    }
    g
}

/// A cycle of `g`, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
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
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_crate_has_a_module_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for krate in ["core", "data", "vae", "gan", "diffusion", "eval"] {
        let mods = modules(&root.join(krate).join("src"));
        assert!(mods.len() > 3, "{krate}: found only {} modules", mods.len());
        if let Some(c) = find_cycle(&graph(&mods)) {
            panic!("{krate}: modules import each other in a cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mods: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::b::Thing;".to_string()),
        ("b".to_string(), "fn f() { crate::c::g() }".to_string()),
        ("c".to_string(), "use super::a;".to_string()),
        ("d".to_string(), "// crate::a in a comment\nuse crate::d::inner;\n#[cfg(test)]\nuse crate::a;".to_string()),
    ]
    .into_iter()
    .collect();
    let g = graph(&mods);
    assert_eq!(g["d"], BTreeSet::new());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}
