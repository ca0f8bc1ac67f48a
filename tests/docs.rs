//! The CLI reference (`docs/cli.md`) against the real binary's `--help`: every subcommand, every
//! `--flag` and every default it prints must be in the doc, so the doc cannot silently rot when
//! a flag is added, renamed or given another default.

mod support;

use support::{picket, workspace};

/// The subcommands `picket --help` lists (without clap's own `help`).
fn subcommands() -> Vec<String> {
    let help = help(&[]);
    let listed = help
        .split("Commands:")
        .nth(1)
        .unwrap_or_else(|| panic!("`picket --help` has no Commands section:\n{help}"));
    listed
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// `picket ARGS --help`, which must succeed.
fn help(args: &[&str]) -> String {
    let out = picket()
        .args(args)
        .arg("--help")
        .output()
        .expect("running picket --help");
    assert!(
        out.status.success(),
        "`picket {} --help` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// One option of a help text: its long flag and its default, if it prints one.
#[derive(Debug, PartialEq, Eq)]
struct HelpOption {
    flag: String,
    default: Option<String>,
}

/// The options of a subcommand's help: each entry starts on a line whose text starts with `-`
/// and runs until the next (clap's long form puts the description on the lines that follow).
fn options(help: &str) -> Vec<HelpOption> {
    let mut entries: Vec<String> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.trim_end() == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options {
            continue;
        }
        if line.trim_start().starts_with('-') {
            entries.push(line.trim().to_string());
        } else if let Some(entry) = entries.last_mut() {
            entry.push(' ');
            entry.push_str(line.trim());
        }
    }
    entries
        .iter()
        .filter_map(|entry| {
            let flag = entry
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|word| word.starts_with("--"))?
                .to_string();
            let default = entry.split("[default: ").nth(1).map(|rest| {
                rest.split(']')
                    .next()
                    .expect("split yields at least one part")
                    .to_string()
            });
            Some(HelpOption { flag, default })
        })
        .collect()
}

/// Every `--flag` a text mentions anywhere (in descriptions too).
fn mentioned_flags(text: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(after.len());
        // `--` alone, or a dash run such as a rule (`---`), is not a flag.
        if len > 0 && after.as_bytes()[0].is_ascii_alphabetic() {
            flags.push(format!("--{}", &after[..len]));
        }
        rest = &after[len..];
    }
    flags
}

/// Whether `doc` names `flag` as a whole word: `--output` is not named by `--output-queue`.
fn names_flag(doc: &str, flag: &str) -> bool {
    mentioned_flags(doc).iter().any(|named| named == flag)
}

/// The table rows of `doc` that document `flag` (`| `--flag ...` | default | meaning |`).
fn rows_of<'a>(doc: &'a str, flag: &str) -> Vec<&'a str> {
    doc.lines()
        .filter(|line| {
            line.strip_prefix("| `")
                .and_then(|cell| cell.strip_prefix(flag))
                .is_some_and(|rest| rest.starts_with([' ', '`']))
        })
        .collect()
}

fn cli_doc() -> String {
    let path = workspace().join("docs/cli.md");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn every_subcommand_flag_and_default_of_the_help_is_in_docs_cli_md() {
    let doc = cli_doc();
    let commands = subcommands();
    // The binary has these four today; an empty or shrunken list would make the rest vacuous.
    for expected in ["run", "replay", "test", "inspect"] {
        assert!(
            commands.iter().any(|c| c == expected),
            "`picket --help` no longer lists `{expected}`: {commands:?}"
        );
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for flag in mentioned_flags(&help(&[])) {
        checked += 1;
        if !names_flag(&doc, &flag) {
            missing.push(format!("`picket {flag}` is not mentioned"));
        }
    }
    for command in &commands {
        if !doc.contains(&format!("## `picket {command}`")) {
            missing.push(format!(
                "`picket {command}` has no `## `picket {command}`` section"
            ));
        }
        let help = help(&[command]);
        for flag in mentioned_flags(&help) {
            checked += 1;
            if !names_flag(&doc, &flag) {
                missing.push(format!("`picket {command} {flag}` is not mentioned"));
            }
        }
        for option in options(&help) {
            let Some(default) = option.default else {
                continue;
            };
            checked += 1;
            let rows = rows_of(&doc, &option.flag);
            if !rows
                .iter()
                .any(|row| row.contains(&format!("| `{default}` |")))
            {
                missing.push(format!(
                    "`picket {command} {}` defaults to `{default}`, but no table row of the \
                     flag gives that default (rows: {rows:?})",
                    option.flag
                ));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} flags and defaults found in the help texts; is the help parsed?"
    );
    assert!(
        missing.is_empty(),
        "docs/cli.md is out of date with `picket --help`:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_help_parser_and_the_doc_matcher_catch_what_they_must() {
    let help = "\
Usage: picket run [OPTIONS]

Options:
      --output <PATH|->
          Where signals go [default: -]
      --output-queue <N>
          Signals queued; see --output [default: 10000]
      --watch  Reload rules
  -h, --help
          Print help
";
    assert_eq!(
        options(help),
        [
            HelpOption {
                flag: "--output".into(),
                default: Some("-".into())
            },
            HelpOption {
                flag: "--output-queue".into(),
                default: Some("10000".into())
            },
            HelpOption {
                flag: "--watch".into(),
                default: None
            },
            HelpOption {
                flag: "--help".into(),
                default: None
            },
        ]
    );
    assert_eq!(
        mentioned_flags(help),
        [
            "--output",
            "--output-queue",
            "--output",
            "--watch",
            "--help"
        ]
    );
    // A longer flag does not document a shorter one, nor the reverse.
    assert!(!names_flag("| `--output-queue N` | `10000` |", "--output"));
    assert!(!names_flag("| `--output PATH` | `-` |", "--output-queue"));
    assert!(names_flag("see `--output`.", "--output"));
    let doc = "| `--output PATH\\|-` | `-` | where |\n| `--output-queue N` | `10000` | queue |";
    assert_eq!(rows_of(doc, "--output").len(), 1);
    assert!(rows_of(doc, "--output")[0].contains("| `-` |"));
    assert!(rows_of(doc, "--state").is_empty());
}
