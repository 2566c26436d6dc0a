//! The shape of the tree, checked: the kernel knows no service's vocabulary, no service crate
//! depends on another (they meet only through the kernel and `p2pos-protocols`), and no module
//! of a service imports a module that imports it back.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The `p2pos-*` crates a manifest's `[dependencies]` names (not its dev-dependencies).
fn dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps
            && let Some((name, _)) = line.split_once('=')
            && name.trim().starts_with("p2pos-")
        {
            deps.insert(name.trim().to_owned());
        }
    }
    deps
}

/// The service crates: every crate under `services/` but the protocols crate.
fn service_crates() -> Vec<(String, PathBuf)> {
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(root().join("services")).expect("services/") {
        let dir = entry.expect("entry").path();
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_owned())
            .expect("a name");
        if name != "p2pos-protocols" {
            crates.push((name, dir));
        }
    }
    crates.sort();
    crates
}

#[test]
fn no_service_crate_depends_on_another_and_the_kernel_on_none() {
    let services = service_crates();
    let names: BTreeSet<String> = services.iter().map(|(n, _)| n.clone()).collect();
    assert!(names.len() >= 5, "{names:?}");
    for (name, dir) in &services {
        let deps = dependencies(&dir.join("Cargo.toml"));
        let others: Vec<_> = deps.intersection(&names).collect();
        assert!(others.is_empty(), "{name} depends on {others:?}");
    }
    let kernel = dependencies(&root().join("kernel/Cargo.toml"));
    assert!(
        !kernel.contains("p2pos-protocols") && kernel.is_disjoint(&names),
        "the kernel depends on {kernel:?}"
    );
}

/// A module's path in its crate: `["registry", "calls"]` for `src/registry/calls.rs`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths a `use` tree names, each as its segments: `a::{b, c::d}` gives `a::b`, `a::c::d`.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut depth = 0;
        let mut item = String::new();
        for c in inner.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &item, out);
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        if !item.trim().is_empty() {
            expand(prefix, &item, out);
        }
        return;
    }
    match tree.split_once("::") {
        Some((head, rest)) => {
            let mut next = prefix.to_vec();
            next.push(head.trim().to_owned());
            expand(&next, rest, out);
        }
        None => {
            let mut path = prefix.to_vec();
            let name = tree.split(" as ").next().unwrap_or(tree).trim();
            path.push(name.to_owned());
            out.push(path);
        }
    }
}

/// The modules of one crate that each module imports with `use crate::`, `use super::` or (in
/// a `mod.rs`) a child module's path; test modules left out.
fn imports(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("source");
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let is_dir = file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        let mut deps = BTreeSet::new();
        for statement in text.split(';') {
            let statement = statement.trim();
            let Some(tree) = statement
                .strip_prefix("pub(crate) use ")
                .or_else(|| statement.strip_prefix("pub use "))
                .or_else(|| statement.strip_prefix("use "))
            else {
                continue;
            };
            let (head, rest) = tree.split_once("::").unwrap_or((tree, ""));
            let base: Vec<String> = match head {
                "crate" => Vec::new(),
                "super" => module[..module.len().saturating_sub(1)].to_vec(),
                "self" => module.clone(),
                child if is_dir => {
                    let mut path = module.clone();
                    path.push(child.to_owned());
                    if !modules.contains_key(&path) {
                        continue;
                    }
                    path
                }
                _ => continue,
            };
            let mut paths = Vec::new();
            expand(&base, rest, &mut paths);
            for path in paths {
                // The deepest module the path goes through.
                let target = (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| modules.contains_key(p));
                if let Some(target) = target
                    && !target.is_empty()
                    && target != *module
                {
                    deps.insert(target);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

#[test]
fn no_module_of_a_service_imports_one_that_imports_it_back() {
    let mut mutual = Vec::new();
    let mut crates: Vec<PathBuf> = service_crates().into_iter().map(|(_, d)| d).collect();
    crates.push(root().join("services/protocols"));
    for dir in crates {
        let graph = imports(&dir.join("src"));
        for (module, deps) in &graph {
            for dep in deps {
                if module < dep && graph.get(dep).is_some_and(|back| back.contains(module)) {
                    mutual.push(format!(
                        "{}: {} <-> {}",
                        dir.display(),
                        module.join("::"),
                        dep.join("::")
                    ));
                }
            }
        }
    }
    assert!(
        mutual.is_empty(),
        "modules importing each other: {mutual:#?}"
    );
}

#[test]
fn the_checker_sees_a_mutual_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).expect("dirs");
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").expect("lib");
    std::fs::write(src.join("a.rs"), "use crate::{b::{c::C, self}};\n").expect("a");
    std::fs::write(src.join("b/mod.rs"), "mod c;\nuse c::C;\n").expect("b");
    std::fs::write(src.join("b/c.rs"), "use crate::a::A;\npub struct C;\n").expect("c");
    let graph = imports(&src);
    let a = vec!["a".to_owned()];
    let c = vec!["b".to_owned(), "c".to_owned()];
    assert!(graph[&a].contains(&c), "{graph:?}");
    assert!(graph[&c].contains(&a), "{graph:?}");
}
