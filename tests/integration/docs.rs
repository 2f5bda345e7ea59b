//! The documentation people copy from stays true: in the README and every
//! page of `docs/`, each plugin configuration and rollout spec is valid, each
//! `canary` command and flag exists, each `make` target exists, each
//! repository path and relative link resolves (anchors included), and every
//! page is linked from the README. Also the demo's spec template.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use canary_core::FilterConfig;
use canary_judge::spec::RolloutSpec;
use canary_tests::{render_template, root, workspace_bin};

/// The README first, then every page of docs/.
fn pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 8, "docs/ has only {docs:?}");
    paths.extend(docs);
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

fn name(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// Every fenced block of `lang` in `text`.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.split(&fence).skip(1).map(|b| b.split("```").next().unwrap_or("")).collect()
}

/// The GitHub anchor of a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_fence = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_doc_page_is_linked_from_the_readme_and_every_relative_link_resolves() {
    let pages = pages();
    let readme = &pages[0].1;
    for (path, _) in &pages[1..] {
        let link = format!("](docs/{})", path.file_name().unwrap().to_string_lossy());
        assert!(readme.contains(&link), "README.md does not link {}", name(path));
    }
    let mut checked = 0;
    for (path, text) in &pages {
        for target in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if target.starts_with("http") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let (file_path, file_text) = if file.is_empty() {
                (path.clone(), text.clone())
            } else {
                let p = path.parent().unwrap().join(file);
                assert!(p.exists(), "{}: link to {target}: {} does not exist", name(path), p.display());
                (p.clone(), if p.is_file() { std::fs::read_to_string(&p).unwrap_or_default() } else { String::new() })
            };
            if !anchor.is_empty() {
                assert!(
                    anchors(&file_text).contains(anchor),
                    "{}: link to {target}: no heading #{anchor} in {}",
                    name(path),
                    name(&file_path)
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} links found");
}

#[test]
fn every_rollout_spec_in_the_docs_is_valid() {
    let mut checked = 0;
    for (path, text) in pages() {
        for block in blocks(&text, "yaml").into_iter().filter(|b| b.contains("rollout:")) {
            RolloutSpec::from_yaml(block).unwrap_or_else(|e| panic!("{}: spec refused: {e}\n{block}", name(&path)));
            checked += 1;
        }
    }
    assert!(checked >= 1);
    // The reference spec is the complete one.
    let reference = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let spec = RolloutSpec::from_yaml(
        blocks(&reference, "yaml").into_iter().find(|b| b.contains("rollout: recs-v2")).unwrap(),
    )
    .unwrap();
    assert_eq!(spec.stages.len(), 5);
    assert!(spec.filter.prediction.is_some());
}

#[test]
fn every_plugin_configuration_in_the_docs_is_valid() {
    let mut checked = 0;
    for (path, text) in pages() {
        let jsons: Vec<serde_json::Value> = blocks(&text, "json")
            .into_iter()
            .map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("{}: not JSON: {e}\n{b}", name(&path))))
            .collect();
        let Some(base) = jsons.iter().find(|j| j.get("challenger_weight_bp").is_some()).cloned() else { continue };
        for json in &jsons {
            // A block of optional fields is checked on top of the full one.
            let mut config = base.clone();
            for (k, v) in json.as_object().unwrap() {
                config[k] = v.clone();
            }
            let parsed = FilterConfig::from_json(config.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{}: plugin configuration refused: {e}\n{json}", name(&path)));
            parsed.validate().unwrap_or_else(|e| panic!("{}: plugin configuration invalid: {e}\n{json}", name(&path)));
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked}");
}

/// Shell lines of the docs' `sh` blocks, continuation lines joined and
/// comments removed.
fn shell_lines() -> Vec<(String, String)> {
    let mut out = vec![];
    for (path, text) in pages() {
        for block in blocks(&text, "sh") {
            let joined = block.replace("\\\n", " ");
            let mut heredoc: Option<String> = None;
            for line in joined.lines() {
                if let Some(end) = &heredoc {
                    if line.trim() == end {
                        heredoc = None;
                    }
                    continue;
                }
                if let Some(at) = line.find("<<") {
                    heredoc =
                        Some(line[at + 2..].trim().trim_matches(|c| c == '\'' || c == '"' || c == '-').to_string());
                }
                let code = match line.find(" #").or_else(|| line.starts_with('#').then_some(0)) {
                    Some(at) => &line[..at],
                    None => line,
                };
                if !code.trim().is_empty() {
                    out.push((name(&path), code.trim().to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_canary_command_and_flag_in_the_docs_exists() {
    let canary = workspace_bin("canary").unwrap();
    let mut help_of = std::collections::HashMap::new();
    let mut checked = 0;
    for (page, line) in shell_lines() {
        for segment in line.split(['|', ';', '&', '(', '$']) {
            let words: Vec<&str> = segment.split_whitespace().collect();
            if words.first() != Some(&"canary") || words.len() < 2 {
                continue;
            }
            let sub = words[1];
            let help = help_of.entry(sub.to_string()).or_insert_with(|| {
                let out = Command::new(&canary).args([sub, "--help"]).output().unwrap();
                assert!(out.status.success(), "{page}: `canary {sub}` is not a command: {line}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            });
            for flag in words[2..].iter().map(|w| w.trim_start_matches('[')).filter(|w| w.starts_with("--")) {
                let flag = flag.split(['=', ']']).next().unwrap();
                assert!(help.contains(flag), "{page}: `canary {sub}` has no flag {flag}: {line}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} canary commands found");
    // The check can fail.
    let out = Command::new(&canary).args(["no-such-command", "--help"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn every_make_target_and_repository_path_in_the_docs_exists() {
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let mut checked = 0;
    for (page, line) in shell_lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"make") {
            for target in words[1..].iter().take_while(|w| !w.contains('=') && !w.starts_with('-')) {
                assert!(makefile.contains(&format!("\n{target}:")), "{page}: no make target {target}: {line}");
                checked += 1;
            }
        }
        for word in &words {
            let word = word.trim_matches(|c| c == '"' || c == '\'' || c == '<' || c == '>');
            let top = ["deploy/", "envoy/", "controller/", "scripts/", "bench/", "tests/", "docs/", ".tools/"];
            if top.iter().any(|t| word.starts_with(t)) {
                assert!(root().join(word).exists(), "{page}: {word} does not exist: {line}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} targets and paths found");
}

#[test]
fn the_demo_spec_template_is_valid() {
    let text = render_template(
        &root().join("controller/examples/rollout.yaml"),
        &[
            ("STAGE_DURATION", "20s".into()),
            ("ADMIN", "http://127.0.0.1:9901".into()),
            ("ECDS_DIR", "/tmp/ecds".into()),
            ("WASM", "/tmp/canary_filter.wasm".into()),
            ("WEBHOOK", "http://127.0.0.1:1/hook".into()),
        ],
    )
    .unwrap();
    RolloutSpec::from_yaml(&text).unwrap();
}
