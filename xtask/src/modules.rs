//! `cargo xtask modules`: the module graph of tracer-daemon, checked for cycles.
//!
//! Every file under `src/` is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`). A module
//! depends on another when it names one of its items through a `crate::`, `super::` or
//! `self::` path (in a `use` or in code); a public `use self::…` re-export is how a parent
//! presents its children and is not a dependency. Test modules are left out. The graph must
//! be acyclic at every depth: between top-level modules, between the children of each
//! module, and between files.
//!
//! Written here rather than taken from `cargo-modules`, which builds rust-analyzer (minutes
//! on these machines) to answer the same question; `syn` does the parsing.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use syn::visit::Visit;

/// A module path: `["session", "actor"]`.
type ModulePath = Vec<String>;

/// Prints the graph's size and fails if it has a cycle.
pub fn check(src: &Path) -> Result<()> {
    let graph = Graph::read(src)?;
    let edges: usize = graph.edges.values().map(BTreeSet::len).sum();
    println!(
        "{} modules, {} dependencies between them",
        graph.edges.len(),
        edges
    );
    let cycles = graph.cycles();
    if !cycles.is_empty() {
        for cycle in &cycles {
            println!("cycle: {}", cycle.join(" → "));
        }
        bail!(
            "the module graph of {} has {} cycle(s)",
            src.display(),
            cycles.len()
        );
    }
    println!("no cycles at any depth");
    Ok(())
}

pub struct Graph {
    /// Module → the modules it depends on.
    edges: BTreeMap<ModulePath, BTreeSet<ModulePath>>,
}

impl Graph {
    pub fn read(src: &Path) -> Result<Self> {
        let files = module_files(src)?;
        let modules: BTreeSet<ModulePath> = files.keys().cloned().collect();
        let mut edges = BTreeMap::new();
        for (module, file) in &files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed =
                syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
            let mut paths = PathCollector::default();
            paths.visit_file(&parsed);
            let targets = paths
                .paths
                .iter()
                .filter_map(|path| resolve(module, path, &modules))
                .filter(|target| target != module)
                .collect();
            edges.insert(module.clone(), targets);
        }
        Ok(Self { edges })
    }

    /// A cycle (as module names) for every depth that has one.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let deepest = self.edges.keys().map(Vec::len).max().unwrap_or(0);
        (1..=deepest)
            .filter_map(|depth| self.collapsed(depth).find_cycle())
            .collect()
    }

    /// The graph with every module cut to its first `depth` segments.
    fn collapsed(&self, depth: usize) -> Collapsed {
        let cut = |module: &ModulePath| module[..module.len().min(depth)].join("::");
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in &self.edges {
            let from = cut(from);
            let entry = edges.entry(from.clone()).or_default();
            entry.extend(targets.iter().map(cut).filter(|to| *to != from));
        }
        Collapsed { edges }
    }
}

struct Collapsed {
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Collapsed {
    /// Depth-first search with the path kept: a back edge closes a cycle.
    fn find_cycle(&self) -> Option<Vec<String>> {
        let mut done = BTreeSet::new();
        for start in self.edges.keys() {
            let mut path = Vec::new();
            if let Some(cycle) = self.visit(start, &mut path, &mut done) {
                return Some(cycle);
            }
        }
        None
    }

    fn visit(
        &self,
        node: &String,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|on| on == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in self.edges.get(node).into_iter().flatten() {
            if let Some(cycle) = self.visit(next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
}

/// Module path → file, for every non-test module file under `src` (the crate roots
/// `lib.rs` and `main.rs` are left out: they only declare).
fn module_files(src: &Path) -> Result<BTreeMap<ModulePath, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            let relative: Vec<String> = path
                .strip_prefix(src)?
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            if relative
                .iter()
                .any(|part| part == "tests" || part == "tests.rs")
            {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Some(name) = relative.last().and_then(|last| last.strip_suffix(".rs")) else {
                continue;
            };
            let mut module: ModulePath = relative[..relative.len() - 1].to_vec();
            if name != "mod" {
                module.push(name.to_owned());
            }
            if module.is_empty() || module == ["main"] || module == ["lib"] {
                continue;
            }
            files.insert(module, path);
        }
    }
    Ok(files)
}

/// The module a path names an item of, if it is one of ours: the longest known prefix.
fn resolve(
    from: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let mut base: ModulePath = from.clone();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = None;
    let mut candidate = base.clone();
    if modules.contains(&candidate) {
        best = Some(candidate.clone());
    }
    for segment in rest {
        candidate.push(segment.clone());
        if modules.contains(&candidate) {
            best = Some(candidate.clone());
        }
    }
    best
}

/// Every `crate::`/`super::`/`self::` path in a file, outside test code and re-exports.
#[derive(Default)]
struct PathCollector {
    paths: Vec<Vec<String>>,
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            flatten(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            out.push([prefix.clone(), vec![name.ident.to_string()]].concat());
        }
        syn::UseTree::Rename(rename) => {
            out.push([prefix.clone(), vec![rename.ident.to_string()]].concat());
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                flatten(tree, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Const(item) => &item.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        flatten(&item.tree, &mut Vec::new(), &mut paths);
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        for path in paths {
            // A parent presenting its children.
            if public && path.first().map(String::as_str) == Some("self") {
                continue;
            }
            self.paths.push(path);
        }
    }

    /// `pub(super)` names a module, but depends on nothing.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.paths.push(
            path.segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect(),
        );
        syn::visit::visit_path(self, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn a_cycle_between_siblings_is_found_and_a_re_export_is_not_one() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            (
                "a/mod.rs",
                "mod inner; pub use self::inner::Thing; use crate::b::Other;",
            ),
            ("a/inner.rs", "pub struct Thing;"),
            (
                "b.rs",
                "pub struct Other; fn f() -> crate::a::Thing { crate::a::Thing }",
            ),
        ]);
        let cycles = Graph::read(dir.path()).unwrap().cycles();
        assert_eq!(cycles[0], ["a", "b", "a"]);
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a/mod.rs", "mod inner; pub use self::inner::Thing;"),
            (
                "a/inner.rs",
                "pub struct Thing; #[cfg(test)] mod tests { use crate::b::Other; }",
            ),
            (
                "b.rs",
                "pub struct Other; fn f() -> super::a::Thing { crate::a::Thing }",
            ),
        ]);
        assert!(Graph::read(dir.path()).unwrap().cycles().is_empty());
    }

    #[test]
    fn the_daemon_has_no_module_cycles() {
        let src = crate::workspace_root().join("tracer-daemon/src");
        let graph = Graph::read(&src).unwrap();
        assert!(
            graph.edges.len() > 30,
            "found {} modules",
            graph.edges.len()
        );
        assert_eq!(graph.cycles(), Vec::<Vec<String>>::new());
    }
}
