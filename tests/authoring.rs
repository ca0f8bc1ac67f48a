//! Writing a rule from zero, as an author outside picket's repository would: the Rust template
//! copied out of the repository, built with its own toolchain file and tested with the command
//! its README gives; the C example built with clang and lld on the ABI alone.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{assert_all_cases_passed, picket, run, temp_dir, workspace};

/// Copies the files under `from` to `to` (a build's `target/` left out).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&source, &dest);
            }
        } else {
            std::fs::copy(&source, &dest).unwrap();
        }
    }
}

/// A shell command run in `dir` with the environment an author's shell has: cargo's and
/// rustup's variables from this test's own build removed (so that the folder's
/// rust-toolchain.toml picks the toolchain, as it does for an author), and the `picket` under
/// test first on the PATH.
fn author_shell(dir: &Path, script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = ["CARGO_HOME", "RUSTUP_HOME", "RUST_BACKTRACE"].contains(&key.as_str());
        if !keep && (key == "CARGO" || key.starts_with("CARGO_") || key.starts_with("RUST")) {
            command.env_remove(&key);
        }
    }
    let picket_dir = Path::new(env!("CARGO_BIN_EXE_picket")).parent().unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![picket_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    command.env("PATH", std::env::join_paths(dirs).unwrap());
    command
}

/// The one command of a README's "Build and test" section: the first line of its `sh` block.
fn readme_test_command(readme: &Path) -> String {
    let text = std::fs::read_to_string(readme).unwrap();
    let section = text
        .split("## Build and test")
        .nth(1)
        .expect("the README has a \"Build and test\" section");
    let block = section.split("```sh\n").nth(1).expect("with an sh block");
    block.lines().next().unwrap().to_string()
}

fn case_count(cases: &Path) -> usize {
    std::fs::read_dir(cases)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
}

#[test]
fn the_rule_template_builds_outside_the_repository_and_passes_its_cases() {
    let template = workspace().join("templates/rule");
    let dir = temp_dir();
    let rule = dir.path().join("my-rule");
    assert!(
        !rule.starts_with(workspace()),
        "the copy must be outside the repository"
    );
    copy_tree(&template, &rule);

    // Point the SDK dependency at this checkout, as the README tells an author to.
    let manifest = rule.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let relative = r#"picket-rule-sdk = { path = "../../rule-sdk" }"#;
    assert!(text.contains(relative), "{text}");
    let sdk = workspace().join("rule-sdk");
    std::fs::write(
        &manifest,
        text.replace(
            relative,
            &format!(
                "picket-rule-sdk = {{ path = {:?} }}",
                sdk.display().to_string()
            ),
        ),
    )
    .unwrap();
    // The crate versions this checkout is tested with (the SDK's dependencies resolve from
    // them without asking the registry).
    std::fs::copy(workspace().join("Cargo.lock"), rule.join("Cargo.lock")).unwrap();

    let command = readme_test_command(&template.join("README.md"));
    assert!(command.contains("picket test"), "{command}");
    let out = run(&mut author_shell(&rule, &command), "");
    let count = case_count(&rule.join("cases"));
    assert!(count >= 4, "the template has only {count} cases");
    assert_all_cases_passed(&command, &out, count);
    // Built by the toolchain its rust-toolchain.toml names, not this test's.
    let toolchain = std::fs::read_to_string(rule.join("rust-toolchain.toml")).unwrap();
    let out = run(&mut author_shell(&rule, "rustc --version"), "");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    assert!(out.stdout.contains(channel), "{} vs {channel}", out.stdout);
}

/// The guide tells an author the same command as the template's README.
#[test]
fn the_rule_guide_gives_the_templates_command() {
    let command = readme_test_command(&workspace().join("templates/rule/README.md"));
    let guide = std::fs::read_to_string(workspace().join("docs/rule-guide.md")).unwrap();
    assert!(
        guide.contains(&command),
        "docs/rule-guide.md lacks `{command}`"
    );
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(readme.contains(&command), "README.md lacks `{command}`");
}

#[test]
fn the_c_example_rule_builds_with_clang_and_lld_and_passes_its_cases() {
    let example = workspace().join("sdk-c/example");
    let dir = temp_dir();
    let module: PathBuf = dir.path().join("shadow_reader.wasm");
    let out = run(Command::new(example.join("build")).arg(&module), "");
    assert_eq!(
        out.code,
        Some(0),
        "building the C example (clang and lld: dev/setup installs them)\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let out = run(picket().arg("inspect").arg(&module), "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let manifest: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(manifest["id"], "shadow-reader");
    assert_eq!(manifest["severity"], "high");
    assert_eq!(manifest["new_value"]["learning_period"], "7d");

    let cases = example.join("cases");
    let count = case_count(&cases);
    let out = run(picket().arg("test").arg(&module).arg(&cases), "");
    assert_all_cases_passed("the C example", &out, count);
}
