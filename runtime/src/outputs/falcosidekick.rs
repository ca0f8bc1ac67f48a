//! `falcosidekick+http(s)://HOST:PORT`: each signal POSTed alone (Falcosidekick decodes one
//! payload a request) in Falco's JSON output format, as Falco's `formats.cpp` builds it: `time`
//! (RFC 3339 with nine fraction digits), `rule`, `priority`, `source`, `hostname`, `output`
//! (`HH:MM:SS.nnnnnnnnn: Priority message (field=value ...)`), `tags`, and `output_fields`
//! (Falco's field names, `evt.time` in nanoseconds). Falcosidekick refuses with 400 a payload
//! without a known priority, a rule, a time or output fields; this one always has them.

use super::http::{HttpClient, HttpSettings};
use super::signal::{ParsedSignal, parse_signal};
use super::{Destination, Failure, Sending};
use bytes::Bytes;
use hyper::Uri;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The Falcosidekick output.
pub struct Falcosidekick {
    client: HttpClient,
}

impl Falcosidekick {
    /// Posts to Falcosidekick at `uri` (its handler listens on `/`).
    pub fn new(uri: Uri, settings: &HttpSettings) -> Result<Falcosidekick, String> {
        Ok(Falcosidekick {
            client: HttpClient::new(uri, settings)?,
        })
    }
}

impl Destination for Falcosidekick {
    fn max_batch(&self) -> usize {
        1
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Bytes]) -> Sending<'a> {
        let payload = match batch.first().map(|line| falco_payload(line)) {
            Some(Ok(payload)) => payload,
            Some(Err(err)) => {
                let error = format!("a signal line that cannot be read back: {err}");
                return Box::pin(std::future::ready(Err(Failure::Rejected(error))));
            }
            None => return Box::pin(std::future::ready(Ok(()))),
        };
        Box::pin(self.client.post("application/json", payload.into()))
    }
}

/// Falco's priority for a picket severity.
pub fn priority(severity: &str) -> &'static str {
    match severity {
        "critical" => "Critical",
        "high" => "Error",
        "medium" => "Warning",
        "low" => "Notice",
        _ => "Informational",
    }
}

/// Falco's tags for a MITRE tactic and technique as picket manifests spell them
/// (`TA0006-credential-access`, `T1552-unsecured-credentials`): `mitre_credential_access` and
/// `T1552`, as Falco's own rules tag them; sorted, as Falcosidekick sorts them.
pub fn tags(tactic: &str, technique: &str) -> Vec<String> {
    let tactic_name = tactic
        .split_once('-')
        .map_or(tactic, |(_, name)| name)
        .replace('-', "_");
    let technique_id = technique.split_once('-').map_or(technique, |(id, _)| id);
    let mut tags = vec![format!("mitre_{tactic_name}"), technique_id.to_string()];
    tags.sort();
    tags
}

/// The Falco JSON payload of a signal line.
#[derive(Serialize)]
struct FalcoPayload<'a> {
    hostname: &'a str,
    output: String,
    output_fields: Map<String, Value>,
    priority: &'static str,
    rule: &'a str,
    source: &'static str,
    tags: Vec<String>,
    time: String,
}

/// A signal line as Falco's JSON output.
pub fn falco_payload(line: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let signal = parse_signal(line)?;
    let fields = output_fields(&signal);
    let priority = priority(&signal.severity);
    let time = falco_time(signal.ts.as_nanos());
    let summary: Vec<String> = fields
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "evt.time" | "picket.id"))
        .map(|(name, value)| match value {
            Value::String(text) => format!("{name}={text}"),
            other => format!("{name}={other}"),
        })
        .collect();
    let output = format!(
        "{}: {priority} {} ({})",
        &time[11..29],
        signal.title,
        summary.join(" ")
    );
    let payload = FalcoPayload {
        hostname: signal.event.node_name.as_deref().unwrap_or(""),
        output,
        output_fields: fields,
        priority,
        rule: &signal.title,
        source: "syscall",
        tags: tags(&signal.tactic, &signal.technique),
        time,
    };
    serde_json::to_vec(&payload)
}

/// Falco's event time: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, always nine fraction digits.
fn falco_time(ns: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .expect("every i64 of nanoseconds is a valid date");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.nanosecond()
    )
}

/// The event's fields under Falco's names (those it has), and picket's own under `picket.`.
fn output_fields(signal: &ParsedSignal<'_>) -> Map<String, Value> {
    let event = &signal.event;
    let mut fields = Map::new();
    let mut put = |name: &str, value: Value| {
        if !value.is_null() {
            fields.insert(name.to_string(), value);
        }
    };
    put("evt.time", json!(event.ts.as_nanos()));
    put("evt.type", json!(event.kind.as_str()));
    put("evt.hostname", json!(event.node_name));
    put("fd.name", json!(event.file.path));
    put("fd.dev", json!(event.file.dev));
    put("fd.ino", json!(event.file.ino));
    put("proc.pid", json!(event.process.pid));
    put("proc.ppid", json!(event.process.ppid));
    put("proc.name", json!(event.process.comm));
    put("proc.exepath", json!(event.process.exe));
    if let Some(args) = &event.process.args {
        let args: Vec<&str> = args.iter().collect();
        put("proc.cmdline", json!(args.join(" ")));
    }
    if let Some(parent) = &event.process.parent {
        put("proc.pexepath", json!(parent.exe));
        if let Some(args) = &parent.args {
            let args: Vec<&str> = args.iter().collect();
            put("proc.pcmdline", json!(args.join(" ")));
        }
    }
    put("user.uid", json!(event.process.uid));
    put("user.name", json!(event.process.user));
    put("group.gid", json!(event.process.gid));
    if let Some(container) = &event.container {
        put("container.id", json!(container.id));
        put("container.image", json!(container.image));
        put("container.name", json!(container.name));
    }
    if let Some(pod) = &event.pod {
        put("k8s.pod.name", json!(pod.name));
        put("k8s.ns.name", json!(pod.namespace));
        put("k8s.pod.uid", json!(pod.uid));
    }
    put("picket.id", json!(signal.id));
    put("picket.rule", json!(signal.rule));
    if let Some(new_value) = &signal.new_value {
        put("picket.new_value.field", json!(new_value.field));
        put("picket.new_value.value", json!(new_value.value));
        put("picket.new_value.group", json!(new_value.group));
    }
    for (key, value) in &signal.context {
        put(&format!("picket.context.{key}"), json!(value));
    }
    if let Some(folded) = &signal.folded {
        put("picket.folded", json!(folded.count));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_map_to_falco_priorities_and_mitre_to_falco_tags() {
        assert_eq!(priority("medium"), "Warning");
        assert_eq!(priority("critical"), "Critical");
        assert_eq!(priority("info"), "Informational");
        assert_eq!(
            tags("TA0006-credential-access", "T1552-unsecured-credentials"),
            ["T1552", "mitre_credential_access"]
        );
        assert_eq!(tags("TA0002", "T1059.004"), ["T1059.004", "mitre_TA0002"]);
        assert_eq!(falco_time(1_000_000_001), "1970-01-01T00:00:01.000000001Z");
    }
}
