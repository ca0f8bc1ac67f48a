//! `picket run --config FILE`: the options of `run` from a TOML or YAML file (docs/cli.md).
//!
//! A key is the long name of one of `run`'s options (`learning-period`, or `learning_period`);
//! its value is what the flag would take (a string, number or boolean; a list for a repeatable
//! option). The file is turned into flags before the command line is parsed, so that every
//! option of `run` has a key without a line of code here, clap checks each value as it checks a
//! flag's, and a flag given on the command line wins over the file's key (for a repeatable
//! option, the command line's list replaces the file's). An unknown key is an error naming the
//! file, the key and its line.

use crate::cli::Cli;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

/// The command whose options a config file holds.
const COMMAND: &str = "run";
/// The flag that names the file; not a key of the file itself.
const CONFIG_FLAG: &str = "config";
/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file's value for one option: what follows `--key=`, once per list item.
#[derive(Debug, Clone, PartialEq)]
enum Setting {
    /// A scalar (strings, numbers and booleans as their text).
    One(String),
    /// A repeatable option's values.
    Many(Vec<String>),
}

/// The command line `args` (program name first) with the options of `run`'s `--config FILE`
/// added as flags where the command line does not set them. Unchanged when the command is not
/// `run` or has no `--config`, or when it does not parse (clap then reports it as usual).
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let command = Cli::command();
    let Ok(matches) = command.clone().try_get_matches_from(&args) else {
        return Ok(args);
    };
    let Some((COMMAND, run)) = matches.subcommand() else {
        return Ok(args);
    };
    let Some(file) = run.get_one::<std::path::PathBuf>(CONFIG_FLAG) else {
        return Ok(args);
    };
    let run_command = command
        .find_subcommand(COMMAND)
        .expect("the run subcommand");
    let options: Vec<&clap::Arg> = run_command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| long != CONFIG_FLAG))
        .collect();
    let keys: BTreeSet<String> = options
        .iter()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect();
    let settings = read(file, &keys)?;
    let mut expanded = args;
    for (key, setting) in settings {
        let arg = options
            .iter()
            .find(|arg| arg.get_long() == Some(key.as_str()))
            .expect("keys are checked against the options");
        if run.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let values = match setting {
            Setting::One(value) => vec![value],
            Setting::Many(values) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    anyhow::bail!("{}: `{key}` takes one value, not a list", file.display());
                }
                values
            }
        };
        for value in values {
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                match value.as_str() {
                    "true" => expanded.push(format!("--{key}").into()),
                    "false" => {}
                    _ => anyhow::bail!("{}: `{key}` is true or false", file.display()),
                }
            } else {
                expanded.push(format!("--{key}={value}").into());
            }
        }
    }
    Ok(expanded)
}

/// Reads `file` (TOML, or YAML by its `.yaml`/`.yml` extension): its keys, each one of `keys`
/// (with `_` read as `-`), and their values.
fn read(file: &Path, keys: &BTreeSet<String>) -> anyhow::Result<Vec<(String, Setting)>> {
    // Whoever can change the file decides what the agent trusts and runs (strict modes).
    crate::trust::check_file(file, "config file")?;
    let bytes = crate::safe_file::read_regular(file, MAX_CONFIG_BYTES)
        .map_err(|err| anyhow::anyhow!("--config {}: {err}", file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("--config {}: not UTF-8 text", file.display()))?;
    let seed = FileSeed { keys };
    let yaml = matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let settings = if yaml {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        seed.deserialize(serde_yaml_ng::Deserializer::from_str(&text))
            .map_err(|err| {
                // The YAML parser gives no position for an error raised at a key: find the
                // key's line (keys are top-level, one per line).
                let message = err.to_string();
                let line = (!message.contains(" line "))
                    .then(|| top_level_key_line(&text, &message))
                    .flatten()
                    .map(|line| format!(" at line {line}"))
                    .unwrap_or_default();
                anyhow::anyhow!("--config {}: {message}{line}", file.display())
            })?
    } else {
        seed.deserialize(
            toml::Deserializer::parse(&text)
                .map_err(|err| anyhow::anyhow!("--config {}: {err}", file.display()))?,
        )
        .map_err(|err| anyhow::anyhow!("--config {}: {err}", file.display()))?
    };
    Ok(settings)
}

/// The line (from 1) of the top-level YAML key that `message` names between backticks.
fn top_level_key_line(text: &str, message: &str) -> Option<usize> {
    let named = message.split('`').nth(1)?;
    text.lines()
        .position(|line| {
            let key = line.split(':').next().unwrap_or("");
            !line.starts_with([' ', '\t', '#', '-'])
                && line.contains(':')
                && key.trim().trim_matches(['"', '\'']) == named
        })
        .map(|index| index + 1)
}

/// Deserializes a config file's top-level map, checking each key as it is read, so that the
/// format's own error names the key's line.
struct FileSeed<'a> {
    keys: &'a BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = Vec<(String, Setting)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = Vec<(String, Setting)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of `picket run` options (key = value)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut settings: Vec<(String, Setting)> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed { keys: self.keys })? {
            if settings.iter().any(|(seen, _)| *seen == key) {
                return Err(de::Error::custom(format!("`{key}` is set twice")));
            }
            let setting = map.next_value::<SettingValue>()?.0;
            settings.push((key, setting));
        }
        Ok(settings)
    }
}

/// One key: known, or an error at that key.
struct KeySeed<'a> {
    keys: &'a BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = String::deserialize(deserializer)?;
        let canonical = key.replace('_', "-");
        if self.keys.contains(&canonical) {
            Ok(canonical)
        } else {
            Err(de::Error::custom(format!(
                "unknown key `{key}`: the keys are the options of `picket run` ({})",
                self.keys.iter().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    }
}

/// A scalar or a list of scalars, as text.
struct SettingValue(Setting);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(SettingVisitor)
            .map(SettingValue)
    }
}

struct SettingVisitor;

impl<'de> Visitor<'de> for SettingVisitor {
    type Value = Setting;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number, boolean or a list of them")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Setting, E> {
        Ok(Setting::One(value.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Setting, E> {
        Ok(Setting::One(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Setting, E> {
        Ok(Setting::One(value.to_string()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Setting, E> {
        Ok(Setting::One(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Setting, E> {
        Ok(Setting::One(value.to_string()))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Setting, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element::<SettingValue>()? {
            match value.0 {
                Setting::One(value) => values.push(value),
                Setting::Many(_) => return Err(de::Error::custom("a list inside a list")),
            }
        }
        Ok(Setting::Many(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    fn expand_with(name: &str, text: &str, line: &[&str]) -> anyhow::Result<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let mut full = vec!["picket", "run", "--config", file.to_str().unwrap()];
        full.extend_from_slice(line);
        let expanded = expand(args(&full))?;
        Ok(expanded[4..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn toml_keys_become_flags_and_the_command_line_wins() {
        let text = "learning-period = \"0s\"\nforget_after = \"90m\"\nstate-capacity = 1000\n\
                    trusted-key = [\"/k/a.pub\", \"/k/b.pub\"]\nprobe = \"tracepoint\"\n";
        let mut flags = expand_with("picket.toml", text, &["--probe=lsm"]).unwrap();
        // The order of different flags does not matter to the parser; a repeated one keeps its
        // order, which the sort keeps too.
        flags.sort();
        assert_eq!(
            flags,
            [
                "--forget-after=90m",
                "--learning-period=0s",
                "--probe=lsm",
                "--state-capacity=1000",
                "--trusted-key=/k/a.pub",
                "--trusted-key=/k/b.pub",
            ]
        );
    }

    #[test]
    fn yaml_works_the_same() {
        let text = "learning-period: 0s\ntrusted-key:\n  - /k/a.pub\nlisten: 127.0.0.1:9464\n";
        let flags = expand_with("picket.yaml", text, &[]).unwrap();
        assert_eq!(
            flags,
            [
                "--learning-period=0s",
                "--trusted-key=/k/a.pub",
                "--listen=127.0.0.1:9464"
            ]
        );
    }

    #[test]
    fn a_repeatable_flag_on_the_command_line_replaces_the_files_list() {
        let text = "trusted-key = [\"/k/a.pub\"]\n";
        let flags = expand_with("picket.toml", text, &["--trusted-key=/k/c.pub"]).unwrap();
        assert_eq!(flags, ["--trusted-key=/k/c.pub"]);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_its_line() {
        let text = "learning-period = \"0s\"\n\nlearning-perod = \"1d\"\n";
        let err = expand_with("picket.toml", text, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("learning-perod"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let text = "probe: lsm\nbogus: 1\n";
        let err = expand_with("picket.yaml", text, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`bogus`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn lists_for_single_options_and_the_config_key_itself_are_refused() {
        let err = expand_with("picket.toml", "probe = [\"lsm\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`probe` takes one value"), "{err}");
        let err = expand_with("picket.toml", "config = \"/x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `config`"), "{err}");
    }

    #[test]
    fn a_bad_value_is_left_to_clap_which_names_the_flag() {
        let flags = expand_with("picket.toml", "state-capacity = \"lots\"\n", &[]).unwrap();
        assert_eq!(flags, ["--state-capacity=lots"]);
        let err = Cli::try_parse_from(["picket", "run"].into_iter().map(String::from).chain(flags))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--state-capacity"), "{err}");
    }
}
