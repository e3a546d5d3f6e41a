//! `crds/` must be exactly what the Rust types generate, and the chart's copy the same.

use std::path::Path;

#[test]
fn crds_dir_matches_the_types() {
    check_dir("crds");
}

#[test]
fn the_charts_crds_match_the_types() {
    check_dir("charts/portcullis/crds");
}

fn check_dir(dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir);
    let mut stale = Vec::new();
    let crds = portcullis_api::crds();
    for (stem, crd) in &crds {
        let file = root.join(format!("{stem}.yaml"));
        let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
        if on_disk != portcullis_api::crd_yaml(crd) {
            stale.push(file.display().to_string());
        }
    }
    let files = std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);
    assert!(
        stale.is_empty() && files == crds.len(),
        "{dir}/ differs from operator/api ({stale:?}, {files} files for {} kinds); regenerate with \
         `cargo run -p portcullis-operator -- crd --dir crds --dir charts/portcullis/crds`",
        crds.len()
    );
}

#[test]
fn every_field_is_documented() {
    // `kubectl explain` shows descriptions; a property without one is a documentation hole.
    fn walk(path: &str, schema: &serde_json::Value, holes: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let at = format!("{path}.{name}");
                let skip = matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                    || path.contains(".resources")
                    || path.contains(".conditions");
                if !skip && sub.get("description").is_none() {
                    holes.push(at.clone());
                }
                walk(&at, sub, holes);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(path, items, holes);
        }
    }
    let mut holes = Vec::new();
    for (stem, crd) in portcullis_api::crds() {
        let v = serde_json::to_value(&crd).unwrap();
        walk(
            stem,
            &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            &mut holes,
        );
    }
    assert!(holes.is_empty(), "fields without a doc comment: {holes:?}");
}
