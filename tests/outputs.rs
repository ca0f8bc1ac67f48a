//! Outputs through the real binary and real receivers on 127.0.0.1 (issue 16): a webhook that
//! refuses, stalls, then accepts; kill -9 with signals spooled; Falcosidekick's own checks and
//! Falco's format; a full spool; a rotated file; flood control; replay's exit status.

mod support;

use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use support::receiver::{Mode, Receiver, Request, free_port};
use support::{K8S_TOKEN, Streaming, picket, run, temp_dir, token_read, workspace};

/// Long enough for anything the tests wait for; they wait for an observable thing, never for
/// a time.
const PATIENCE: Duration = Duration::from_secs(60);

fn k8s_rule() -> tempfile::TempDir {
    support::rules_dir_of(&["k8s-sa-token"])
}

/// `count + 1` token reads: the first learns the group, each later one (a new executable)
/// raises one signal (with a learning period of 0).
fn events(count: u32) -> String {
    let mut lines = vec![token_read(0, "/usr/bin/app", K8S_TOKEN)];
    lines.extend((1..=count).map(|i| token_read(i, &format!("/tmp/drop{i}/tool"), K8S_TOKEN)));
    lines.join("\n") + "\n"
}

fn write_events(dir: &Path, count: u32) -> std::path::PathBuf {
    let path = dir.join("events.jsonl");
    std::fs::write(&path, events(count)).unwrap();
    path
}

/// The signals a replay of `events` raises, as stdout prints them (the expected ones).
fn expected_signals(rules: &Path, events: &Path, extra: &[&str]) -> Vec<Value> {
    let out = run(
        picket()
            .args(["replay", "--learning-period", "0s", "--rules"])
            .arg(rules)
            .args(extra)
            .arg(events),
        "",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.signals()
}

fn ids(signals: &[Value]) -> Vec<String> {
    signals
        .iter()
        .map(|s| {
            s["id"]
                .as_str()
                .expect("every signal has an id")
                .to_string()
        })
        .collect()
}

/// The ids in arrival order, each kept at its first arrival (a receiver deduplicating).
fn deduplicated(signals: &[Value]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids(signals)
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn replay_to(rules: &Path, outputs: &[String], extra: &[&str]) -> std::process::Command {
    let mut command = picket();
    command
        .args(["replay", "--learning-period", "0s", "--rules"])
        .arg(rules);
    for output in outputs {
        command.arg("--output").arg(output);
    }
    command.args(extra);
    command
}

#[test]
fn a_receiver_that_refuses_then_stalls_then_accepts_gets_every_signal_once_in_order() {
    let rules = k8s_rule();
    let work = temp_dir();
    let events = write_events(work.path(), 40);
    let expected = ids(&expected_signals(rules.path(), &events, &[]));
    assert_eq!(expected.len(), 40);
    let unique: HashSet<&String> = expected.iter().collect();
    assert_eq!(unique.len(), 40, "ids are unique per signal");

    // Refusing: nothing listens on the port yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let state = work.path().join("state");
    let mut replay = replay_to(
        rules.path(),
        std::slice::from_ref(&url),
        &[
            "--output-timeout",
            "1s",
            "--output-batch",
            "7",
            "--output-wait",
            "10m",
            "--state",
        ],
    );
    replay.arg(&state).arg(&events);
    let replay = Streaming::spawn(&mut replay);
    assert!(
        replay.wait_for_log(
            "cannot deliver signals, keeping them and retrying",
            PATIENCE
        ),
        "{}",
        replay.stderr()
    );
    // Stalling: it takes requests and never answers; the agent times out and tries again.
    let receiver = Receiver::start(port, Mode::Stall, None);
    assert!(receiver.wait(PATIENCE, |r| r.stalled() >= 2));
    // Accepting.
    receiver.set_mode(Mode::Accept);
    let (code, _, stderr) = replay.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let received = receiver.lines();
    assert_eq!(deduplicated(&received), expected, "{stderr}");
    let request = &receiver.accepted()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
    // Batches of at most 7, delivered on few connections (keep-alive).
    assert!(receiver.accepted().iter().all(|r| {
        r.body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            <= 7
    }));
    assert!(receiver.accepted().len() >= 6);
}

#[test]
fn signals_spooled_when_picket_is_killed_arrive_after_a_restart() {
    let rules = k8s_rule();
    let work = temp_dir();
    let events_file = write_events(work.path(), 25);
    let expected = ids(&expected_signals(rules.path(), &events_file, &[]));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let state = work.path().join("state");
    // Events come through stdin, which stays open: the replay is still running when killed.
    let mut command = replay_to(rules.path(), std::slice::from_ref(&url), &["--state"]);
    command.arg(&state).arg("-");
    let mut replay = Streaming::spawn(&mut command);
    for line in events(25).lines() {
        replay.send(line);
    }
    // Every signal is in the spool once its id is in a segment file.
    let spooled = || {
        let mut text = Vec::new();
        for dir in std::fs::read_dir(state.join("spool")).into_iter().flatten() {
            for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|e| e == "seg") {
                    text.extend(std::fs::read(path).unwrap());
                }
            }
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        expected.iter().all(|id| text.contains(id.as_str()))
    };
    let start = std::time::Instant::now();
    while !spooled() {
        assert!(
            start.elapsed() < PATIENCE,
            "not spooled: {}",
            replay.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = replay.kill9();
    assert!(stderr.contains("cannot deliver signals"), "{stderr}");

    let receiver = Receiver::start(port, Mode::Accept, None);
    let empty = work.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let mut again = replay_to(rules.path(), std::slice::from_ref(&url), &["--state"]);
    again.arg(&state).arg(&empty);
    let out = run(&mut again, "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("delivered first"), "{}", out.stderr);
    assert_eq!(deduplicated(&receiver.lines()), expected);
}

#[test]
fn replay_exits_3_when_signals_stay_spooled_and_the_next_run_delivers_them() {
    let rules = k8s_rule();
    let work = temp_dir();
    let events = write_events(work.path(), 5);
    let expected = ids(&expected_signals(rules.path(), &events, &[]));
    let port = free_port();
    let url = format!("falcosidekick+http://127.0.0.1:{port}");
    let state = work.path().join("state");
    let mut first = replay_to(
        rules.path(),
        std::slice::from_ref(&url),
        &["--output-wait", "1s", "--state"],
    );
    first.arg(&state).arg(&events);
    let out = run(&mut first, "");
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(out.stderr.contains("stay in the spool"), "{}", out.stderr);

    // Without --state, nothing can wait: the same is a loss, exit 1.
    let mut lost = replay_to(
        rules.path(),
        std::slice::from_ref(&url),
        &["--output-wait", "1s"],
    );
    lost.arg(&events);
    let out = run(&mut lost, "");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("could not be delivered"),
        "{}",
        out.stderr
    );

    let receiver = Receiver::start(port, Mode::Accept, Some(falcosidekick_check));
    let mut next = replay_to(rules.path(), std::slice::from_ref(&url), &["--state"]);
    next.arg(&state).arg("/dev/null");
    let out = run(&mut next, "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let delivered: Vec<String> = receiver
        .lines()
        .iter()
        .map(|p| {
            p["output_fields"]["picket.id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(delivered, expected);
}

/// Falcosidekick's handler (`mainHandler` and `newFalcoPayload` in its handlers.go,
/// `FalcoPayload.Check` in types/types.go): a POST whose body decodes into its `FalcoPayload`
/// (Go's decoder: each known field of its type, unknown fields ignored) with a priority it
/// knows, a rule, a non-zero time and output fields; else 400.
fn falcosidekick_check(request: &Request) -> Result<(), String> {
    if request.method != "POST" {
        return Err("Please send with post http method".into());
    }
    let payload: Value = serde_json::from_slice(&request.body).map_err(|e| e.to_string())?;
    let object = payload.as_object().ok_or("not an object")?;
    let string = |name: &str| -> Result<Option<&str>, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(format!("{name}: {other} is not a string")),
        }
    };
    for name in ["uuid", "output", "source", "hostname"] {
        string(name)?;
    }
    // PriorityType.UnmarshalJSON: the names it knows, any case; "" (Default) fails Check.
    let priority = string("priority")?.unwrap_or("").to_lowercase();
    let known = [
        "emergency",
        "alert",
        "critical",
        "error",
        "warning",
        "notice",
        "informational",
        "info",
        "debug",
    ];
    if !known.contains(&priority.as_str()) {
        return Err(format!("priority `{priority}` unknown"));
    }
    if string("rule")?.unwrap_or("").is_empty() {
        return Err("no rule".into());
    }
    // time.Time: RFC 3339 (fraction optional); the zero time fails Check.
    let time = string("time")?.ok_or("no time")?;
    let parsed = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("time `{time}`: {e}"))?;
    if parsed.unix_timestamp() == -62_135_596_800 {
        return Err("zero time".into());
    }
    match object.get("output_fields") {
        Some(Value::Object(fields)) if !fields.is_empty() => {}
        Some(Value::Object(_)) | None | Some(Value::Null) => return Err("no output fields".into()),
        Some(other) => return Err(format!("output_fields: {other} is not an object")),
    }
    match object.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) if tags.iter().all(Value::is_string) => {}
        Some(other) => return Err(format!("tags: {other} is not a list of strings")),
    }
    Ok(())
}

#[test]
fn the_falcosidekick_check_refuses_what_falcosidekick_refuses() {
    let good = serde_json::json!({"output":"x","priority":"Warning","rule":"r",
        "time":"2026-11-22T22:22:03.517200114Z","output_fields":{"fd.name":"/x"},"source":"syscall"});
    let request = |body: &Value| Request {
        method: "POST".into(),
        path: "/".into(),
        headers: Vec::new(),
        body: serde_json::to_vec(body).unwrap(),
    };
    assert_eq!(falcosidekick_check(&request(&good)), Ok(()));
    for (field, value) in [
        ("priority", serde_json::json!("Severe")),
        ("priority", Value::Null),
        ("rule", serde_json::json!("")),
        ("time", Value::Null),
        ("time", serde_json::json!("0001-01-01T00:00:00Z")),
        ("output_fields", serde_json::json!({})),
        ("tags", serde_json::json!("T1552")),
    ] {
        let mut bad = good.clone();
        bad[field] = value.clone();
        assert!(
            falcosidekick_check(&request(&bad)).is_err(),
            "{field}: {value}"
        );
    }
}

#[test]
fn falcosidekick_gets_falcos_json_output_format_field_by_field() {
    let rules = support::rules_dir_of(&["eks-token", "k8s-sa-token"]);
    let example = workspace().join("examples/token-reads.jsonl");
    let receiver = Receiver::start(0, Mode::Accept, Some(falcosidekick_check));
    let url = format!("falcosidekick+{}", receiver.url());
    // The same replay writes the signals to stdout too: the payloads are compared with them.
    let mut command = picket();
    command
        .args(["replay", "--output", "-", "--output", &url, "--rules"])
        .arg(rules.path())
        .arg(&example);
    let out = run(&mut command, "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(receiver.refused().is_empty(), "{:?}", receiver.refused());
    let signals = out.signals();
    let requests = receiver.accepted();
    assert_eq!(signals.len(), 2);
    assert_eq!(requests.len(), signals.len(), "one signal a request");
    for (signal, request) in signals.iter().zip(&requests) {
        assert_eq!(request.path, "/");
        assert_eq!(request.header("content-type"), Some("application/json"));
        let payload: Value = serde_json::from_slice(&request.body).unwrap();
        let keys: Vec<&str> = payload
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "hostname",
                "output",
                "output_fields",
                "priority",
                "rule",
                "source",
                "tags",
                "time"
            ]
        );
        let event = &signal["event"];
        assert_eq!(payload["hostname"], event["host"]);
        assert_eq!(payload["priority"], "Warning", "severity medium");
        assert_eq!(payload["rule"], signal["title"]);
        assert_eq!(payload["source"], "syscall");
        assert_eq!(
            payload["tags"],
            serde_json::json!(["T1552", "mitre_credential_access"])
        );
        // Falco's time: always nine fraction digits.
        let ts = signal["ts"].as_str().unwrap();
        assert_eq!(payload["time"], ts);
        assert_eq!(ts.len(), "2026-11-22T22:22:03.517200114Z".len());
        let fields = &payload["output_fields"];
        let ns = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp_nanos();
        assert_eq!(fields["evt.time"].as_i64().map(i128::from), Some(ns));
        assert_eq!(fields["evt.type"], "open");
        assert_eq!(fields["evt.hostname"], event["host"]);
        assert_eq!(fields["fd.name"], event["file"]["path"]);
        assert_eq!(fields["proc.pid"], event["process"]["pid"]);
        assert_eq!(fields["proc.exepath"], event["process"]["exe"]);
        assert_eq!(fields["proc.name"], event["process"]["comm"]);
        let args: Vec<&str> = event["process"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(fields["proc.cmdline"], args.join(" "));
        assert_eq!(fields["user.uid"], event["process"]["uid"]);
        assert_eq!(fields["container.id"], event["container"]["id"]);
        assert_eq!(fields["container.image"], event["container"]["image"]);
        assert_eq!(fields["picket.id"], signal["id"]);
        assert_eq!(fields["picket.rule"], signal["rule"]);
        assert_eq!(
            fields["picket.new_value.value"],
            signal["new_value"]["value"]
        );
        // `output`: Falco's prefix (time of day, priority), the message, the fields.
        let output = payload["output"].as_str().unwrap();
        let prefix = format!(
            "{}: Warning {} (",
            &ts[11..29],
            signal["title"].as_str().unwrap()
        );
        assert!(output.starts_with(&prefix), "{output}");
        assert!(
            output.contains(&format!(
                "fd.name={}",
                event["file"]["path"].as_str().unwrap()
            )),
            "{output}"
        );
    }
}

#[test]
fn a_full_spool_drops_the_oldest_and_says_how_many() {
    let rules = k8s_rule();
    let work = temp_dir();
    let events = write_events(work.path(), 60);
    let expected = ids(&expected_signals(rules.path(), &events, &[]));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let state = work.path().join("state");
    let mut first = replay_to(
        rules.path(),
        std::slice::from_ref(&url),
        &["--spool-bytes", "8KiB", "--output-wait", "1s", "--state"],
    );
    first.arg(&state).arg(&events);
    let out = run(&mut first, "");
    // Signals were lost: exit 1, and the log says how many.
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let dropped: u64 = out
        .stderr
        .lines()
        .filter(|l| l.contains("oldest signals dropped: its spool is full"))
        .map(|l| {
            let at = l.find("dropped=").expect("a dropped count") + "dropped=".len();
            l[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(dropped > 0 && dropped < 60, "{}", out.stderr);

    let receiver = Receiver::start(port, Mode::Accept, None);
    let mut next = replay_to(rules.path(), std::slice::from_ref(&url), &["--state"]);
    next.arg(&state).arg("/dev/null");
    let out = run(&mut next, "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // What is left is the newest, in order: everything after the dropped ones.
    assert_eq!(
        deduplicated(&receiver.lines()),
        expected[dropped as usize..]
    );
}

#[test]
fn a_rotated_output_file_keeps_receiving() {
    let rules = k8s_rule();
    let work = temp_dir();
    let file = work.path().join("signals.jsonl");
    let rotated = work.path().join("signals.jsonl.1");
    let mut command = replay_to(rules.path(), &[file.display().to_string()], &[]);
    command.arg("-");
    let mut replay = Streaming::spawn(&mut command);
    let all = events(20);
    let lines: Vec<&str> = all.lines().collect();
    let count_lines = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for line in &lines[..11] {
        replay.send(line);
    }
    let start = std::time::Instant::now();
    while count_lines(&file) < 10 {
        assert!(start.elapsed() < PATIENCE, "{}", replay.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // As logrotate does: rename, then the writer is expected to reopen the path.
    std::fs::rename(&file, &rotated).unwrap();
    for line in &lines[11..] {
        replay.send(line);
    }
    let (code, _, stderr) = replay.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let read = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let before = read(&rotated);
    let after = read(&file);
    assert_eq!(before.len(), 10);
    assert_eq!(after.len(), 10, "{stderr}");
    let mut all_ids = ids(&before);
    all_ids.extend(ids(&after));
    let events_file = write_events(work.path(), 20);
    assert_eq!(
        all_ids,
        ids(&expected_signals(rules.path(), &events_file, &[]))
    );
}

#[test]
fn a_flood_of_one_rule_and_group_is_folded_into_one_signal_that_says_how_many() {
    let rules = k8s_rule();
    let work = temp_dir();
    let events = write_events(work.path(), 10);
    let unfolded = expected_signals(rules.path(), &events, &["--flood-limit", "0"]);
    assert_eq!(unfolded.len(), 10);
    let folded = expected_signals(rules.path(), &events, &["--flood-limit", "3"]);
    // Three as they came, then one for the other seven: the first held back, with `folded`.
    assert_eq!(folded.len(), 4, "{folded:?}");
    assert_eq!(ids(&folded[..3]), ids(&unfolded[..3]));
    assert!(folded[..3].iter().all(|s| s.get("folded").is_none()));
    let fold = &folded[3];
    assert_eq!(fold["id"], unfolded[3]["id"]);
    assert_eq!(fold["event"], unfolded[3]["event"]);
    assert_eq!(fold["folded"]["count"], 7);
    assert_eq!(fold["folded"]["first_ts"], unfolded[3]["ts"]);
    assert_eq!(fold["folded"]["last_ts"], unfolded[9]["ts"]);
    // A new window (event time) passes signals again.
    let later = format!(
        "{}{}\n",
        std::fs::read_to_string(&events).unwrap(),
        token_read(200, "/tmp/later/tool", K8S_TOKEN)
    );
    std::fs::write(&events, later).unwrap();
    let folded = expected_signals(rules.path(), &events, &["--flood-limit", "3"]);
    assert_eq!(folded.len(), 5);
    assert_eq!(
        folded[3]["folded"]["count"], 7,
        "the fold comes when its window closes"
    );
    assert!(folded[4].get("folded").is_none());
    assert_eq!(folded[4]["event"]["process"]["exe"], "/tmp/later/tool");
}
