//! `--output SPEC`: which kind of output a spec names, and the name it is reported under.

use hyper::Uri;
use hyper::header::{HeaderName, HeaderValue};
use std::path::{Path, PathBuf};

/// Where signals go: one `--output SPEC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// `-`: standard output.
    Stdout,
    /// A file path, appended to.
    File(PathBuf),
    /// `http://...` or `https://...`: signals POSTed as JSON.
    Http(Uri),
    /// `falcosidekick+http(s)://HOST:PORT`: signals POSTed in Falco's JSON output format.
    Falcosidekick(Uri),
}

/// The prefix of a Falcosidekick spec.
const FALCOSIDEKICK: &str = "falcosidekick+";

impl OutputSpec {
    /// Parses a spec: `-`, `http(s)://URL`, `falcosidekick+http(s)://HOST:PORT`, else a path.
    pub fn parse(text: &str) -> Result<OutputSpec, String> {
        if text == "-" {
            return Ok(OutputSpec::Stdout);
        }
        if let Some(url) = text.strip_prefix(FALCOSIDEKICK) {
            return parse_url(url).map(OutputSpec::Falcosidekick);
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return parse_url(text).map(OutputSpec::Http);
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}`: unknown output scheme (-, a file path, http(s)://URL or \
                 falcosidekick+http(s)://HOST:PORT)"
            ));
        }
        if text.is_empty() {
            return Err("an empty output spec".into());
        }
        Ok(OutputSpec::File(PathBuf::from(text)))
    }

    /// Whether signals travel over the network (and are spooled on disk under `--state`).
    pub fn is_remote(&self) -> bool {
        matches!(self, OutputSpec::Http(_) | OutputSpec::Falcosidekick(_))
    }

    /// The name in logs and metrics labels: `stdout`, the path, or the URL without its query
    /// (which may carry a token).
    pub fn name(&self) -> String {
        match self {
            OutputSpec::Stdout => "stdout".into(),
            OutputSpec::File(path) => path.display().to_string(),
            OutputSpec::Http(uri) => without_query(uri),
            OutputSpec::Falcosidekick(uri) => format!("{FALCOSIDEKICK}{}", without_query(uri)),
        }
    }

    /// The spool folder of a remote output under the state directory: named by a hash of the
    /// whole spec, so that two outputs never share one and a restart finds its own.
    pub fn spool_dir(&self, state: &Path) -> PathBuf {
        let spec = match self {
            OutputSpec::Http(uri) => uri.to_string(),
            OutputSpec::Falcosidekick(uri) => format!("{FALCOSIDEKICK}{uri}"),
            OutputSpec::Stdout | OutputSpec::File(_) => self.name(),
        };
        let hash = blake3::hash(spec.as_bytes());
        state.join("spool").join(&hash.to_hex()[..16])
    }
}

fn without_query(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str()),
        uri.path()
    )
}

fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|err| format!("`{text}` is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{text}`: only http:// and https:// are supported")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{text}`: no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{text}`: credentials in the URL are not sent; give them as a header \
             (--output-header 'Authorization: ...')"
        ));
    }
    Ok(uri)
}

/// One `--output-header 'Name: value'` (or a line of `--output-header-file`).
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!("`{}`: a header is `Name: value`", redact(text)));
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|err| format!("header name `{}`: {err}", name.trim()))?;
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|err| format!("header `{name}`: its value: {err}"))?;
    // Never printed in debug output.
    value.set_sensitive(true);
    Ok((name, value))
}

/// The headers of `--output-header-file`: one `Name: value` a line; empty lines and lines
/// starting with `#` are skipped.
pub fn read_header_file(path: &Path) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(number, line)| {
            parse_header(line).map_err(|err| format!("{}:{}: {err}", path.display(), number + 1))
        })
        .collect()
}

/// The name part of a header line only: its value may be a secret.
fn redact(text: &str) -> String {
    let shown: String = text.chars().take(24).collect();
    if shown.len() < text.len() {
        format!("{shown}...")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_their_kind() {
        assert_eq!(OutputSpec::parse("-").unwrap(), OutputSpec::Stdout);
        assert_eq!(
            OutputSpec::parse("/var/log/picket.jsonl").unwrap(),
            OutputSpec::File("/var/log/picket.jsonl".into())
        );
        let http = OutputSpec::parse("https://siem.example:8443/in?token=secret").unwrap();
        assert!(matches!(http, OutputSpec::Http(_)));
        assert!(http.is_remote());
        assert_eq!(http.name(), "https://siem.example:8443/in");
        let sidekick = OutputSpec::parse("falcosidekick+http://127.0.0.1:2801").unwrap();
        assert_eq!(sidekick.name(), "falcosidekick+http://127.0.0.1:2801/");
        assert_ne!(
            sidekick.spool_dir(Path::new("/s")),
            OutputSpec::parse("http://127.0.0.1:2801")
                .unwrap()
                .spool_dir(Path::new("/s"))
        );
        for bad in [
            "ftp://x/",
            "falcosidekick+ftp://x",
            "http://user:pw@x/",
            "https:///nohost",
            "",
        ] {
            assert!(OutputSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_are_name_colon_value() {
        let (name, value) = parse_header("Authorization: Bearer abc").unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer abc");
        assert!(value.is_sensitive());
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
