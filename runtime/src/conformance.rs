//! Conformance cases (docs/cases.md): a rule, events, and exactly the signals
//! they must raise.

use crate::event::{Event, describe_path_error};
use crate::pipeline::{OutputSignal, Overrides, Pipeline, PipelineConfig, RuleStatus, Sink};
use crate::sandbox::{LoadedModule, RuleError, Sandbox};
use crate::time::{duration_nanos, parse_duration};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A case file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case<'a> {
    /// The rule id the case is for.
    pub rule: String,
    /// What the case shows.
    #[serde(default)]
    pub description: String,
    /// Overrides of the rule's new-value defaults.
    #[serde(default)]
    pub settings: Option<CaseSettings>,
    /// The events, in order.
    #[serde(borrow)]
    pub events: Vec<Event<'a>>,
    /// Exactly the signals expected, in order.
    pub expect: Vec<Expectation>,
}

/// A case's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSettings {
    /// Learning period, such as `7d` or `0s`.
    pub learning_period: Option<String>,
    /// Forget-after period, such as `28d`.
    pub forget_after: Option<String>,
}

/// One expected signal; fields left out are not checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// 0-based index of the event that raises it.
    pub event: usize,
    /// Its `new_value.value`.
    pub new_value: Option<String>,
    /// Its `new_value.field`.
    pub field: Option<String>,
    /// Its `new_value.group`.
    pub group: Option<String>,
    /// Its `rule`.
    pub rule: Option<String>,
    /// Its `title`.
    pub title: Option<String>,
    /// Its `severity`.
    pub severity: Option<String>,
    /// Its `tactic`.
    pub tactic: Option<String>,
    /// Its `technique`.
    pub technique: Option<String>,
    /// Entries its `context` must hold, each with this value (others it holds are not
    /// checked).
    #[serde(default)]
    pub context: std::collections::BTreeMap<String, String>,
}

/// A signal a case raised, reduced to what expectations can check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Index of the raising event.
    pub event: usize,
    /// `rule`.
    pub rule: String,
    /// `title`.
    pub title: String,
    /// `severity`.
    pub severity: String,
    /// `tactic`.
    pub tactic: String,
    /// `technique`.
    pub technique: String,
    /// `new_value.value`.
    pub new_value: Option<String>,
    /// `new_value.field`.
    pub field: Option<String>,
    /// `new_value.group`.
    pub group: Option<String>,
    /// `context`, in the rule's order.
    pub context: Vec<(String, String)>,
}

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every expectation held and nothing else was raised.
    Pass,
    /// What differed.
    Fail(Vec<String>),
    /// The case file could not be used.
    Unusable(String),
}

/// Parses a case file's text; errors give the line, column and field.
pub fn parse_case(text: &str) -> Result<(Case<'_>, Overrides), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let case: Case<'_> = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let inner = err.inner();
        format!(
            "line {}, column {}: {}",
            inner.line(),
            inner.column(),
            describe_path_error(&err)
        )
    })?;
    de.end()
        .map_err(|err| format!("trailing characters after the case: {err}"))?;
    let mut overrides = Overrides::default();
    if let Some(settings) = &case.settings {
        let parse = |field: &str, text: &Option<String>| -> Result<Option<u64>, String> {
            text.as_deref()
                .map(|t| {
                    parse_duration(t)
                        .map(duration_nanos)
                        .map_err(|err| format!("field `settings.{field}`: {err}"))
                })
                .transpose()
        };
        overrides.learning_period_ns = parse("learning_period", &settings.learning_period)?;
        overrides.forget_after_ns = parse("forget_after", &settings.forget_after)?;
    }
    for (index, event) in case.events.iter().enumerate() {
        event.check_fields(&format!("events[{index}]."))?;
    }
    for (index, expectation) in case.expect.iter().enumerate() {
        if expectation.event >= case.events.len() {
            return Err(format!(
                "field `expect[{index}].event`: {} is past the last event (the case has {})",
                expectation.event,
                case.events.len()
            ));
        }
    }
    Ok((case, overrides))
}

/// Runs a parsed case against a loaded module, with a fresh state.
pub fn run_case(
    sandbox: &Arc<Sandbox>,
    module: &LoadedModule,
    case: &Case<'_>,
    overrides: Overrides,
) -> Outcome {
    if case.rule != module.manifest.id {
        return Outcome::Unusable(format!(
            "field `rule`: the case is for `{}`, but the module is `{}`",
            case.rule, module.manifest.id
        ));
    }
    let config = PipelineConfig {
        overrides,
        // Cases check every failure; quarantine would only hide later ones.
        max_consecutive_failures: u32::MAX,
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(Arc::clone(sandbox), config);
    if let Err(err) = pipeline.install(module.clone()) {
        return Outcome::Fail(vec![format!("the module could not be instantiated: {err}")]);
    }
    let mut recorder = Recorder::default();
    for (index, event) in case.events.iter().enumerate() {
        recorder.current = index;
        pipeline.handle(event, &mut recorder);
    }
    let mut problems = recorder.failures;
    problems.extend(compare(&case.expect, &recorder.observed));
    if problems.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(problems)
    }
}

/// Differences between expected and observed signals.
pub fn compare(expected: &[Expectation], observed: &[Observed]) -> Vec<String> {
    let mut problems = Vec::new();
    if expected.len() != observed.len() {
        problems.push(format!(
            "expected {} signal(s), got {}",
            expected.len(),
            observed.len()
        ));
    }
    for (index, (want, got)) in expected.iter().zip(observed).enumerate() {
        if want.event != got.event {
            problems.push(format!(
                "signal {index}: raised by event {}, expected event {}",
                got.event, want.event
            ));
        }
        let mut check = |field: &str, want: Option<&str>, got: Option<&str>| {
            if let Some(want) = want
                && Some(want) != got
            {
                problems.push(format!(
                    "signal {index}: {field} is {}, expected {want:?}",
                    got.map_or("absent".to_string(), |g| format!("{g:?}"))
                ));
            }
        };
        check(
            "new_value",
            want.new_value.as_deref(),
            got.new_value.as_deref(),
        );
        check("field", want.field.as_deref(), got.field.as_deref());
        check("group", want.group.as_deref(), got.group.as_deref());
        check("rule", want.rule.as_deref(), Some(&got.rule));
        check("title", want.title.as_deref(), Some(&got.title));
        check("severity", want.severity.as_deref(), Some(&got.severity));
        check("tactic", want.tactic.as_deref(), Some(&got.tactic));
        check("technique", want.technique.as_deref(), Some(&got.technique));
        for (key, value) in &want.context {
            let have = got
                .context
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            check(&format!("context.{key}"), Some(value), have);
        }
    }
    if !problems.is_empty() {
        for got in observed {
            let mut line = format!("raised: event {}", got.event);
            if let Some(field) = &got.field {
                let _ = write!(line, ", field {field:?}");
            }
            if let Some(value) = &got.new_value {
                let _ = write!(line, ", new_value {value:?}");
            }
            if let Some(group) = &got.group {
                let _ = write!(line, ", group {group:?}");
            }
            for (key, value) in &got.context {
                let _ = write!(line, ", context.{key} {value:?}");
            }
            problems.push(line);
        }
    }
    problems
}

#[derive(Default)]
struct Recorder {
    current: usize,
    observed: Vec<Observed>,
    failures: Vec<String>,
}

impl Sink for Recorder {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        let rule = signal.rule;
        self.observed.push(Observed {
            event: self.current,
            rule: rule.id.clone(),
            title: rule.title.clone(),
            severity: rule.severity.as_str().to_string(),
            tactic: rule.tactic.clone(),
            technique: rule.technique.clone(),
            new_value: signal.new_value.map(|nv| nv.value.clone()),
            field: signal.new_value.map(|nv| nv.field.clone()),
            group: signal.new_value.map(|nv| nv.group.clone()),
            context: signal.context.0.clone(),
        });
    }

    fn rule_failed(&mut self, _rule: &RuleStatus, error: &RuleError, _event: &Event<'_>) {
        self.failures.push(format!(
            "the rule failed on event {}: {error}",
            self.current
        ));
    }

    fn rule_quarantined(&mut self, _rule: &RuleStatus, reason: &str) {
        self.failures
            .push(format!("the rule was quarantined: {reason}"));
    }
}

/// The case files named by `paths`: files as given, directories as their `*.json` files in
/// name order.
pub fn collect_cases(paths: &[PathBuf]) -> Vec<Result<PathBuf, String>> {
    let mut cases = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|entry| entry.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|ext| ext == "json") && p.is_file())
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        cases.push(Err(format!("{}: no *.json case files", path.display())));
                    }
                    cases.extend(found.into_iter().map(Ok));
                }
                Err(err) => cases.push(Err(format!("{}: {err}", path.display()))),
            }
        } else if path.exists() {
            cases.push(Ok(path.clone()));
        } else {
            cases.push(Err(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    cases
}

/// Largest case file read: a case is events written by hand or by a script, never this big.
pub const MAX_CASE_BYTES: u64 = 64 << 20;

/// Reads (a regular file of at most [`MAX_CASE_BYTES`], without blocking), parses and runs one
/// case file.
pub fn run_case_file(
    sandbox: &Arc<Sandbox>,
    module: &LoadedModule,
    path: &Path,
) -> (String, Outcome) {
    let text = match crate::safe_file::read_regular(path, MAX_CASE_BYTES)
        .map_err(|err| err.to_string())
        .and_then(|bytes| String::from_utf8(bytes).map_err(|err| format!("not UTF-8: {err}")))
    {
        Ok(text) => text,
        Err(err) => return (String::new(), Outcome::Unusable(err)),
    };
    match parse_case(&text) {
        Ok((case, overrides)) => {
            let outcome = run_case(sandbox, module, &case, overrides);
            (case.description.clone(), outcome)
        }
        Err(err) => (String::new(), Outcome::Unusable(err)),
    }
}

/// How the cases of one `picket test` run came out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases that passed.
    pub passed: usize,
    /// Cases whose signals differed from the expected ones.
    pub failed: usize,
    /// Case files that could not be read or used.
    pub unusable: usize,
}

/// Runs every case file found under `paths` against `module` and writes the report `picket test`
/// prints: a `PASS`, `FAIL` (with each problem) or `ERROR` line per case, then the totals.
pub fn report(
    sandbox: &Arc<Sandbox>,
    module: &LoadedModule,
    paths: &[PathBuf],
    out: &mut impl std::io::Write,
) -> std::io::Result<Tally> {
    let mut tally = Tally::default();
    for case in collect_cases(paths) {
        let path = match case {
            Ok(path) => path,
            Err(err) => {
                writeln!(out, "ERROR {err}")?;
                tally.unusable += 1;
                continue;
            }
        };
        let (description, outcome) = run_case_file(sandbox, module, &path);
        let shown = path.display();
        match outcome {
            Outcome::Pass => {
                tally.passed += 1;
                writeln!(out, "PASS  {shown}  {description}")?;
            }
            Outcome::Fail(problems) => {
                tally.failed += 1;
                writeln!(out, "FAIL  {shown}  {description}")?;
                for problem in problems {
                    writeln!(out, "      {problem}")?;
                }
            }
            Outcome::Unusable(err) => {
                tally.unusable += 1;
                writeln!(out, "ERROR {shown}: {err}")?;
            }
        }
    }
    let Tally {
        passed,
        failed,
        unusable,
    } = tally;
    writeln!(
        out,
        "{} case(s): {passed} passed, {failed} failed, {unusable} unusable",
        passed + failed + unusable
    )?;
    Ok(tally)
}
