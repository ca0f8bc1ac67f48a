//! Fleet learning (`--shared-state`) against a real Redis server that each test starts on a
//! loopback port (Debian's redis-server, with a password; once with TLS): learning carried from
//! one agent to the next, one signal from twenty agents seeing the same new reader at once, an
//! outage that costs no detection and is reconciled, the operator's `allow` and `forget`, and a
//! store someone else wrote bad entries into.

mod support;

use std::time::Duration;
use support::redis::{PASSWORD, RedisCluster, RedisServer};
use support::{EKS_TOKEN, Streaming, picket, rule_wasm, run, temp_dir};

const APP: &str = "registry.example/app";
const WAIT: Duration = Duration::from_secs(30);
/// Many agents start at once on a small machine here: a rule's calls are given time, since
/// their deadline is not what these tests are about.
const RELAXED: [&str; 2] = ["--rule-timeout", "10s"];

fn bundled_rules() -> tempfile::TempDir {
    let dir = temp_dir();
    for rule in ["eks-token", "k8s-sa-token"] {
        let file = format!("{}.wasm", rule.replace('-', "_"));
        std::fs::copy(rule_wasm(rule), dir.path().join(file)).unwrap();
    }
    dir
}

/// A read of the EKS token on day `day` (of November 2026) by `exe` in a container of `image`.
fn read(day: u32, second: u32, exe: &str, image: &str) -> String {
    serde_json::json!({
        "ts": format!("2026-11-{day:02}T10:00:{second:02}Z"),
        "kind": "open",
        "host": "node-a",
        "file": {"path": EKS_TOKEN, "access": "read"},
        "process": {"pid": 4000 + second, "exe": exe},
        "container": {"id": "c0ffee", "image": image},
    })
    .to_string()
}

/// `picket replay` of `events` with the bundled rules, sharing state through `server`.
fn replay(rules: &tempfile::TempDir, server: &RedisServer, events: &[String]) -> support::Run {
    replay_with(rules, &server.url(), &[], events)
}

fn replay_with(
    rules: &tempfile::TempDir,
    url: &str,
    extra: &[&str],
    events: &[String],
) -> support::Run {
    let mut input = events.join("\n");
    input.push('\n');
    let out = run(
        picket()
            .arg("replay")
            .args(RELAXED)
            .arg("--rules")
            .arg(rules.path())
            .args(["--shared-state", url])
            .args(extra)
            .arg("-"),
        &input,
    );
    assert_eq!(out.code, Some(0), "replay failed:\n{}", out.stderr);
    out
}

/// A week of the app's routine: the AWS CLI and python read the token.
fn routine() -> Vec<String> {
    vec![
        read(1, 0, "/usr/bin/aws", APP),
        read(2, 0, "/usr/bin/python3", APP),
        read(3, 0, "/usr/bin/aws", APP),
    ]
}

/// `picket replay -` sharing state through `server`, fed by the test as it goes, logging at
/// `log`.
fn streaming_agent(rules: &tempfile::TempDir, server: &RedisServer, log: &str) -> Streaming {
    Streaming::spawn(
        picket()
            .env("PICKET_LOG", log)
            .arg("replay")
            .args(RELAXED)
            .arg("--rules")
            .arg(rules.path())
            .args(["--shared-state", &server.url()])
            .arg("-"),
    )
}

fn values(signals: &[serde_json::Value]) -> Vec<String> {
    signals
        .iter()
        .map(|s| s["new_value"]["value"].as_str().unwrap().to_string())
        .collect()
}

fn state(server: &RedisServer, args: &[&str]) -> support::Run {
    run(
        picket()
            .arg("state")
            .args(args)
            .args(["--shared-state", &server.url()]),
        "",
    )
}

#[test]
fn what_one_agent_learned_another_knows_and_a_new_reader_is_new_once_for_the_fleet() {
    let server = RedisServer::start();
    let rules = bundled_rules();
    // Agent A learns the app's readers over its first days.
    assert!(replay(&rules, &server, &routine()).signals().is_empty());

    // Agent B never saw the app: alone, its first reads would start a learning week.
    let day_ten = [
        read(10, 0, "/usr/bin/aws", APP),
        read(10, 1, "/tmp/.x/kubectl", APP),
    ];
    let alone = run(
        picket()
            .arg("replay")
            .args(RELAXED)
            .arg("--rules")
            .arg(rules.path())
            .arg("-"),
        &(day_ten.join("\n") + "\n"),
    );
    assert!(alone.signals().is_empty(), "{}", alone.stdout);
    // In the fleet it knows the AWS CLI and flags kubectl, confirmed by the store.
    let joined = replay(&rules, &server, &day_ten).signals();
    assert_eq!(values(&joined), ["/tmp/.x/kubectl"]);
    assert_eq!(joined[0]["fleet"]["confirmed"], true, "{}", joined[0]);
    assert_eq!(joined[0]["new_value"]["group"], APP);

    // New exactly once for the fleet: agent C, later, does not raise it again.
    let later = replay(&rules, &server, &[read(11, 0, "/tmp/.x/kubectl", APP)]);
    assert!(later.signals().is_empty(), "{}", later.stdout);

    // What the store holds, as an operator sees it.
    let shown = state(&server, &["show", "--rule", "eks-token"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    let groups: Vec<serde_json::Value> = shown
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(groups.len(), 1, "{}", shown.stdout);
    let group = &groups[0];
    assert_eq!(group["group"], APP);
    assert_eq!(group["status"], "detecting");
    assert_eq!(group["learning_started"], "2026-11-01T10:00:00Z");
    assert_eq!(group["learning_until"], "2026-11-08T10:00:00Z");
    let aws = group["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "/usr/bin/aws")
        .expect("the AWS CLI is listed");
    assert_eq!(aws["first_seen"], "2026-11-01T10:00:00Z");
    assert_eq!(aws["last_seen"], "2026-11-10T10:00:00Z");
}

#[test]
fn twenty_agents_seeing_the_same_new_reader_at_once_raise_one_signal() {
    let server = RedisServer::start();
    let rules = bundled_rules();
    replay(&rules, &server, &routine());
    let mut agents: Vec<Streaming> = (0..20)
        .map(|_| streaming_agent(&rules, &server, "info"))
        .collect();
    for agent in &agents {
        assert!(
            agent.wait_for_log("joined the fleet", WAIT),
            "{}",
            agent.stderr()
        );
    }
    // Every agent sees the same intruder at the same moment.
    let intruder = read(12, 0, "/tmp/.x/curl", APP);
    for agent in &mut agents {
        agent.send(&intruder);
    }
    let mut signals = Vec::new();
    for agent in agents {
        let (code, raised, stderr) = agent.finish();
        assert_eq!(code, Some(0), "{stderr}");
        signals.extend(raised);
    }
    assert_eq!(values(&signals), ["/tmp/.x/curl"], "{signals:?}");
    assert_eq!(signals[0]["fleet"]["confirmed"], true);
}

#[test]
fn an_outage_costs_no_detection_and_is_reconciled_when_the_store_returns() {
    let mut server = RedisServer::start();
    let rules = bundled_rules();
    replay(&rules, &server, &routine());
    let mut agent = streaming_agent(&rules, &server, "info");
    assert!(
        agent.wait_for_log("joined the fleet", WAIT),
        "{}",
        agent.stderr()
    );

    server.kill();
    agent.send(&read(12, 0, "/tmp/.x/nc", APP));
    // Raised while the store is down: the outage costs no detection.
    assert!(agent.wait_for_signals(1, WAIT), "{}", agent.stderr());

    server.restart();
    assert!(
        agent.wait_for_log("fleet store reachable again", WAIT),
        "{}",
        agent.stderr()
    );
    let (code, raised, stderr) = agent.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(values(&raised), ["/tmp/.x/nc"]);
    assert_eq!(raised[0]["fleet"]["confirmed"], false, "{}", raised[0]);
    assert!(
        raised[0]["fleet"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{}",
        raised[0]
    );
    // What the agent learned alone reached the fleet: another agent knows the reader.
    let after = replay(
        &rules,
        &server,
        &[
            read(13, 0, "/tmp/.x/nc", APP),
            read(13, 1, "/tmp/.x/socat", APP),
        ],
    );
    assert_eq!(values(&after.signals()), ["/tmp/.x/socat"]);
}

#[test]
fn allow_silences_a_reader_on_every_agent_and_forget_makes_it_new_again() {
    let server = RedisServer::start();
    let rules = bundled_rules();
    replay(&rules, &server, &routine());
    // An agent that runs while the operator approves.
    let mut running = streaming_agent(&rules, &server, "info,picket::state::fleet=debug");
    assert!(
        running.wait_for_log("joined the fleet", WAIT),
        "{}",
        running.stderr()
    );

    let allowed = state(
        &server,
        &["allow", "eks-token", APP, "/usr/local/bin/vault-agent"],
    );
    assert_eq!(allowed.code, Some(0), "{}", allowed.stderr);
    assert!(
        running.wait_for_log("changes from other nodes", WAIT),
        "{}",
        running.stderr()
    );
    running.send(&read(12, 0, "/usr/local/bin/vault-agent", APP));
    running.send(&read(12, 1, "/tmp/.x/kubectl", APP));
    let (code, signals, stderr) = running.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(values(&signals), ["/tmp/.x/kubectl"]);
    // A fresh agent knows the approval too.
    let fresh = replay(
        &rules,
        &server,
        &[read(12, 5, "/usr/local/bin/vault-agent", APP)],
    );
    assert!(fresh.signals().is_empty(), "{}", fresh.stdout);

    // Forgotten, python is new again for the fleet.
    let forgot = state(&server, &["forget", "eks-token", APP, "/usr/bin/python3"]);
    assert_eq!(forgot.code, Some(0), "{}", forgot.stderr);
    let again = replay(&rules, &server, &[read(13, 0, "/usr/bin/python3", APP)]);
    assert_eq!(values(&again.signals()), ["/usr/bin/python3"]);
    // Forgetting what is not there says so.
    let missing = state(&server, &["forget", "eks-token", APP, "/nowhere"]);
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    // A whole group forgotten learns again from its next event.
    let group = state(&server, &["forget", "eks-token", APP]);
    assert_eq!(group.code, Some(0), "{}", group.stderr);
    let relearning = replay(
        &rules,
        &server,
        &[
            read(20, 0, "/tmp/.x/anything", APP),
            read(20, 1, "/tmp/.x/else", APP),
        ],
    );
    assert!(relearning.signals().is_empty(), "{}", relearning.stdout);
}

#[test]
fn malformed_entries_in_the_store_are_skipped_counted_and_never_make_a_value_known() {
    let server = RedisServer::start();
    let rules = bundled_rules();
    replay(&rules, &server, &routine());
    let tag = picket::state::fleet::keys::tag("eks-token", "process.exe", APP);
    // Whoever can write the store writes what no agent would.
    server.cli(&[
        "HSET",
        &format!("picket:v:{{{tag}}}"),
        "/tmp/.x/evil",
        "not-a-time",
    ]);
    // An index entry filed under a tag that is not its own (the separators are NUL bytes).
    server.cli_with_input(
        &["-x", "HSET", "picket:groups", "0123456789abcdef01234567"],
        b"eks-token\0process.exe\0elsewhere",
    );
    let agent = replay(&rules, &server, &[read(12, 0, "/tmp/.x/evil", APP)]);
    assert_eq!(values(&agent.signals()), ["/tmp/.x/evil"]);
    assert!(
        agent.stderr.contains("malformed=2"),
        "the skipped entries are counted:\n{}",
        agent.stderr
    );
    // A malformed log entry is skipped by an agent following the log.
    let mut running = streaming_agent(&rules, &server, "info");
    assert!(
        running.wait_for_log("joined the fleet", WAIT),
        "{}",
        running.stderr()
    );
    server.cli(&[
        "XADD",
        "picket:log",
        "*",
        "o",
        "elsewhere",
        "k",
        "v",
        "r",
        "eks-token",
        "s",
        "process.exe",
        "g",
        APP,
        "t",
        "yesterday",
        "v",
        "/tmp/.x/sneaky",
        "l",
        "now",
    ]);
    assert!(
        running.wait_for_log("log entry skipped", WAIT),
        "{}",
        running.stderr()
    );
    running.send(&read(12, 1, "/tmp/.x/sneaky", APP));
    let (code, signals, stderr) = running.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(values(&signals), ["/tmp/.x/sneaky"]);
}

#[test]
fn tls_with_a_password_file_carries_learning() {
    let server = RedisServer::start_tls();
    let rules = bundled_rules();
    let secrets = temp_dir();
    let password = secrets.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let url = server.url_without_password();
    let password_arg = password.display().to_string();
    let ca = server.ca().display().to_string();
    let tls: [&str; 4] = [
        "--shared-state-password-file",
        &password_arg,
        "--shared-state-ca",
        &ca,
    ];
    assert!(
        replay_with(&rules, &url, &tls, &routine())
            .signals()
            .is_empty()
    );
    let joined = replay_with(
        &rules,
        &url,
        &tls,
        &[
            read(10, 0, "/usr/bin/python3", APP),
            read(10, 1, "/tmp/.x/kubectl", APP),
        ],
    );
    assert_eq!(values(&joined.signals()), ["/tmp/.x/kubectl"]);
    // Without the CA the server is not trusted: the agent decides alone, and says so.
    let untrusted = run(
        picket()
            .arg("replay")
            .args(RELAXED)
            .arg("--rules")
            .arg(rules.path())
            .args(["--shared-state", &url])
            .args(&tls[..2])
            .arg("-"),
        &(read(10, 2, "/tmp/.x/other", APP) + "\n"),
    );
    assert_eq!(untrusted.code, Some(0), "{}", untrusted.stderr);
    assert!(
        untrusted
            .stderr
            .contains("fleet store unreachable at start"),
        "{}",
        untrusted.stderr
    );
}

#[test]
fn a_state_directory_can_be_shown_exported_imported_allowed_and_forgotten() {
    let rules = bundled_rules();
    let dir = temp_dir();
    let state_dir = dir.path().join("state");
    let local = |events: &[String]| {
        let out = run(
            picket()
                .arg("replay")
                .args(RELAXED)
                .arg("--rules")
                .arg(rules.path())
                .arg("--state")
                .arg(&state_dir)
                .arg("-"),
            &(events.join("\n") + "\n"),
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out
    };
    local(&routine());
    let cli = |args: &[&str]| {
        run(
            picket()
                .arg("state")
                .args(args)
                .arg("--state")
                .arg(&state_dir),
            "",
        )
    };
    let shown = cli(&["show"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    let group: serde_json::Value =
        serde_json::from_str(shown.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(group["rule"], "eks-token");
    assert_eq!(group["status"], "detecting", "{group}");
    assert_eq!(group["values"].as_array().unwrap().len(), 2, "{group}");

    assert_eq!(
        cli(&["allow", "eks-token", APP, "/usr/local/bin/vault-agent"]).code,
        Some(0)
    );
    assert_eq!(
        cli(&["forget", "eks-token", APP, "/usr/bin/python3"]).code,
        Some(0)
    );
    let after = local(&[
        read(12, 0, "/usr/local/bin/vault-agent", APP),
        read(12, 1, "/usr/bin/python3", APP),
    ]);
    assert_eq!(values(&after.signals()), ["/usr/bin/python3"]);

    // A baseline exported here and imported into the fleet store.
    let exported = cli(&["export"]);
    assert_eq!(exported.code, Some(0), "{}", exported.stderr);
    let file = dir.path().join("baseline.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let server = RedisServer::start();
    let imported = run(
        picket()
            .args(["state", "import", "--shared-state", &server.url()])
            .arg(&file),
        "",
    );
    assert_eq!(imported.code, Some(0), "{}", imported.stderr);
    let fleet = replay(
        &rules,
        &server,
        &[
            read(14, 0, "/usr/local/bin/vault-agent", APP),
            read(14, 1, "/tmp/.x/kubectl", APP),
        ],
    );
    assert_eq!(values(&fleet.signals()), ["/tmp/.x/kubectl"]);
    // A damaged line is refused with its line number.
    std::fs::write(&file, "{\"rule\": 3}\n").unwrap();
    let refused = run(
        picket()
            .args(["state", "import", "--shared-state", &server.url()])
            .arg(&file),
        "",
    );
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains(":1:"), "{}", refused.stderr);
}

#[test]
fn a_redis_cluster_keeps_each_group_atomic_on_its_own_slot() {
    let cluster = RedisCluster::start();
    let rules = bundled_rules();
    let url = cluster.url();
    // Groups on different slots (so on different nodes of the cluster).
    let other = "registry.example/other";
    let mut week = routine();
    week.push(read(1, 5, "/usr/bin/node", other));
    assert!(replay_with(&rules, &url, &[], &week).signals().is_empty());
    let day_ten = [
        read(10, 0, "/usr/bin/aws", APP),
        read(10, 1, "/tmp/.x/kubectl", APP),
        read(10, 2, "/usr/bin/node", other),
        read(10, 3, "/tmp/.x/kubectl", other),
    ];
    let joined = replay_with(&rules, &url, &[], &day_ten);
    assert!(joined.stderr.contains("cluster=true"), "{}", joined.stderr);
    assert_eq!(
        values(&joined.signals()),
        ["/tmp/.x/kubectl", "/tmp/.x/kubectl"]
    );
    let later = replay_with(&rules, &url, &[], &day_ten);
    assert!(later.signals().is_empty(), "{}", later.stdout);
    // Every key of a group is on one node: the scripts stayed on one slot.
    let tag = picket::state::fleet::keys::tag("eks-token", "process.exe", APP);
    let slot = |key: &str| cluster.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
    assert_eq!(
        slot(&format!("picket:g:{{{tag}}}")),
        slot(&format!("picket:v:{{{tag}}}"))
    );
}
