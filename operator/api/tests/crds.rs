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
    let files = std::fs::read_dir(&root)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
            })
            .count()
        })
        .unwrap_or(0);
    assert!(
        stale.is_empty() && files == crds.len(),
        "{dir}/ differs from operator/api ({stale:?}, {files} files for {} kinds); regenerate with \
         `cargo run -p portcullis-operator -- crd --dir crds --dir charts/portcullis/crds --schemas crds/schemas`",
        crds.len()
    );
}

#[test]
fn the_json_schemas_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/schemas");
    let crds = portcullis_api::crds();
    for (_, crd) in &crds {
        let file = root.join(portcullis_api::json_schema_path(crd));
        let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            on_disk == portcullis_api::json_schema_text(crd),
            "{} differs from operator/api; regenerate with \
             `cargo run -p portcullis-operator -- crd --dir crds --dir charts/portcullis/crds --schemas crds/schemas`",
            file.display()
        );
    }
    let group = root.join(portcullis_api::GROUP);
    let files = std::fs::read_dir(&group).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        files,
        crds.len(),
        "{}: one schema per kind, no other file",
        group.display()
    );
}

#[test]
fn a_json_schema_is_strict_and_pins_the_kind() {
    let crd = portcullis_api::crds()
        .into_iter()
        .find(|(stem, _)| *stem == "transfergateway")
        .unwrap()
        .1;
    let s = portcullis_api::json_schema(&crd);
    assert_eq!(
        s["properties"]["kind"]["enum"],
        serde_json::json!(["TransferGateway"])
    );
    assert_eq!(
        s["properties"]["apiVersion"]["enum"],
        serde_json::json!(["portcullis.dev/v1alpha1"])
    );
    assert_eq!(s["additionalProperties"], false);
    assert_eq!(s["properties"]["spec"]["additionalProperties"], false);
    let listener = &s["properties"]["spec"]["properties"]["listeners"]["items"];
    assert_eq!(listener["additionalProperties"], false);
    // metadata is the apiserver's; nothing of it is closed here.
    assert!(
        s["properties"]["metadata"]
            .get("additionalProperties")
            .is_none()
    );
    fn no_nullable(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(o) => {
                !o.contains_key("nullable") && o.values().all(no_nullable)
            }
            serde_json::Value::Array(a) => a.iter().all(no_nullable),
            _ => true,
        }
    }
    assert!(
        no_nullable(&s),
        "OpenAPI's nullable is spelt as a null type"
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
