//! Chart artifacts of `POST /process/code-run`.
//!
//! Contract: Python code runs under [`PRELUDE`] (passed with `-c`; the code itself comes on
//! stdin), which reports every matplotlib figure shown or left open as one marker line
//! `\x1e\x1fcove-chart:<base64 JSON>\n` on stdout. [`extract`] takes those lines out of the
//! output and returns their charts for `artifacts.charts` (the SDKs' `Chart`: `type`, `title`,
//! `png` (base64), `elements`, axis labels, ticks and scales). A marker whose data does not
//! decode is left in the output as it was.

use serde::Serialize;

use crate::process::ExecuteResponse;

/// The Python program code-run's Python code runs under.
pub const PRELUDE: &str = include_str!("code_run_prelude.py");
/// Starts a chart line in the output.
const MARK: &str = "\x1e\x1fcove-chart:";

/// `ExecuteResponse` of code-run, with its artifacts.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunResponse {
    /// The exit code.
    pub exit_code: i32,
    /// stdout and stderr combined, chart lines removed.
    pub result: String,
    /// Charts (always present, maybe empty).
    pub artifacts: Artifacts,
}

/// `CodeRunArtifacts`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Artifacts {
    /// One per figure, in the order they were shown.
    pub charts: Vec<serde_json::Value>,
}

/// Splits the chart lines out of a code-run answer.
pub fn extract(resp: ExecuteResponse) -> CodeRunResponse {
    let mut result = String::with_capacity(resp.result.len());
    let mut charts = Vec::new();
    let mut rest = resp.result.as_str();
    while let Some(start) = rest.find(MARK) {
        let data = &rest[start + MARK.len()..];
        let (line, after) = data.split_once('\n').unwrap_or((data, ""));
        match decode(line) {
            Some(chart) => {
                result.push_str(&rest[..start]);
                charts.push(chart);
            }
            // Not ours after all: kept, with its newline.
            None => result.push_str(&rest[..rest.len() - after.len()]),
        }
        rest = after;
    }
    result.push_str(rest);
    CodeRunResponse { exit_code: resp.exit_code, result, artifacts: Artifacts { charts } }
}

fn decode(b64: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim_end_matches('\r')).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok().filter(serde_json::Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn chart_lines_leave_the_output_and_become_artifacts_in_order() {
        let a = b64(br#"{"type":"line","title":"a"}"#);
        let b = b64(br#"{"type":"bar","title":"bc"}"#);
        let out = format!("before\npartial{MARK}{a}\nmiddle\n{MARK}{b}\nafter\n");
        let r = extract(ExecuteResponse { exit_code: 0, result: out });
        assert_eq!(r.result, "before\npartialmiddle\nafter\n");
        let titles: Vec<_> = r.artifacts.charts.iter().map(|c| c["title"].as_str().unwrap_or_default()).collect();
        assert_eq!(titles, ["a", "bc"]);
    }

    #[test]
    fn a_marker_that_does_not_decode_stays_in_the_output() {
        let out = format!("x{MARK}not base64!\ny\n{MARK}{}", b64(b"[1]"));
        let r = extract(ExecuteResponse { exit_code: 1, result: out.clone() });
        assert_eq!(r.result, out);
        assert!(r.artifacts.charts.is_empty());
        let plain = extract(ExecuteResponse { exit_code: 0, result: "plain\n".into() });
        assert_eq!((plain.result.as_str(), plain.artifacts.charts.len()), ("plain\n", 0));
    }
}
