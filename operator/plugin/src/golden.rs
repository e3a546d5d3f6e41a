//! Golden tests: `policy check` of the examples and of one broken fixture per problem class
//! (`tests/fixtures/broken/*.yaml`, each replacing objects of `tests/fixtures/base.yaml`), with
//! the findings compared to `*.golden` beside it. `UPDATE_GOLDEN=1` rewrites them.

use std::path::{Path, PathBuf};

use crate::{check, load};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The documents of `rel` (under `root`), named by `rel`.
fn docs(root: &Path, rel: &str) -> Vec<load::Doc> {
    let text = std::fs::read_to_string(root.join(rel)).expect("a fixture");
    load::split(Path::new(rel), &text).expect("fixture YAML")
}

fn findings(docs: Vec<load::Doc>) -> String {
    let report = check::check(docs, "ns", chrono::Utc::now().timestamp()).expect("checks");
    let mut out: String = report
        .findings
        .iter()
        .filter(|f| f.severity != check::Severity::Note)
        .map(|f| format!("{f}\n"))
        .collect();
    out.push_str(&format!(
        "{} error(s), {} warning(s), {} gateway(s) compiled\n",
        report.errors(),
        report.count(check::Severity::Warning),
        report.bundles.len()
    ));
    out
}

fn golden(file: &Path, got: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(file, got).expect("writes the golden file");
        return;
    }
    let want = std::fs::read_to_string(file)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", file.display()));
    assert_eq!(got, want, "{}", file.display());
}

#[test]
fn the_base_fixture_is_clean() {
    let got = findings(docs(&fixtures(), "base.yaml"));
    assert_eq!(got, "0 error(s), 0 warning(s), 1 gateway(s) compiled\n");
}

#[test]
fn each_broken_fixture_reports_its_problem_at_its_line() {
    let root = fixtures();
    let mut cases: Vec<_> = std::fs::read_dir(root.join("broken"))
        .expect("the broken fixtures")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "{cases:?}");
    for case in cases {
        let rel = format!("broken/{}", case.file_name().unwrap().to_string_lossy());
        let broken = docs(&root, &rel);
        let replaced = |d: &load::Doc| {
            broken
                .iter()
                .any(|b| b.kind() == d.kind() && b.name() == d.name())
        };
        let mut all: Vec<load::Doc> = docs(&root, "base.yaml")
            .into_iter()
            .filter(|d| !replaced(d))
            .collect();
        all.extend(broken);
        let got = findings(all);
        // Each case is broken: at least one finding, every one of them in the case's file.
        assert!(
            !got.starts_with("0 error(s), 0 warning(s)"),
            "{rel}: nothing found"
        );
        for line in got
            .lines()
            .filter(|l| l.contains(": error [") || l.contains(": warning ["))
        {
            assert!(
                line.starts_with(&format!("{rel}:")),
                "{rel}: a finding elsewhere: {line}"
            );
        }
        golden(&case.with_extension("golden"), &got);
    }
}

#[test]
fn the_examples_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut all = Vec::new();
    for f in [
        "zones",
        "networkzones",
        "keyring",
        "endpoint",
        "rbac",
        "gateway",
    ] {
        if root.join(format!("{f}.yaml")).exists() {
            all.extend(docs(&root, &format!("{f}.yaml")));
        }
    }
    let got = findings(all);
    golden(&fixtures().join("examples.golden"), &got);
    assert!(
        got.lines()
            .last()
            .is_some_and(|l| l.starts_with("0 error(s)")),
        "{got}"
    );
}
