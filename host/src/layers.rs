//! The crate's modules form layers: a module may use the ones below it, never one above, so
//! there is no import cycle between them (a cycle makes two modules one in all but name). This
//! test reads the sources and fails naming the file that reaches up.

/// Lowest first. `policy` is pure decisions; `api` and `commands` are the top (user surfaces).
const LAYERS: &[&str] = &[
    "paths", "redact", "stats", "policy", "store", "report", "tab", "browser", "server", "host", "models", "exec",
    "pool", "api", "commands",
];

/// Items the crate root re-exports, by the module that defines them.
const ROOT_ITEMS: &[(&str, &str)] =
    &[("Host", "host"), ("HostConfig", "host"), ("PendingTab", "host"), ("Tab", "tab"), ("TabError", "tab")];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

/// The crate modules a source text names (`crate::x`, `crate::{x, y::z}`, re-exported items).
fn uses(src: &str) -> Vec<String> {
    // Test code may reach anywhere: only what ships counts.
    let code = src.split("#[cfg(test)]").next().unwrap_or("");
    let mut names = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let group = match rest.strip_prefix('{') {
                Some(g) => &g[..g.find('}').unwrap_or(g.len())],
                None => rest,
            };
            for part in group.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                names.push(name);
            }
        }
    }
    names
        .into_iter()
        .filter_map(|n| ROOT_ITEMS.iter().find(|(item, _)| *item == n).map(|(_, m)| m.to_string()).or(Some(n)))
        .filter(|n| layer(n).is_some())
        .collect()
}

#[test]
fn no_module_uses_one_above_it() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    let mut checked = 0;
    let mut wrong = Vec::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let (Some(own), true) = (layer(module), rel.ends_with(".rs")) else { continue };
        checked += 1;
        for used in uses(&std::fs::read_to_string(&p).unwrap()) {
            if layer(&used).unwrap() > own {
                wrong.push(format!("{rel} ({module}) uses {used}, a layer above it"));
            }
        }
    }
    assert!(checked > 50, "read the sources ({checked} files)");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_each_form_of_use() {
    let src = "use crate::pool::Pool;\nuse crate::{Host, tab::x};\n// crate::api\nfn f() { crate::exec::y(); }\n";
    assert_eq!(uses(src), ["pool", "host", "tab", "exec"]);
    assert!(uses("#[cfg(test)]\nuse crate::api;").is_empty(), "test code is not counted");
}
