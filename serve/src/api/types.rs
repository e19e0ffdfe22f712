//! Schema types shared by the APIs: how the OpenAPI document describes values whose Rust
//! types live in other crates (a cell's output items, chat messages), and small parsers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::AppError;

/// One output item of a cell (DSGym's / Jupyter's shapes), in order.
#[allow(dead_code)] // documentation only: the real type is dsbox_kernel::OutputItem
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItemDoc {
    /// Text the cell wrote: `name` is `stdout` or `stderr`.
    Stream { name: String, text: String },
    /// The value of the cell's last expression, as MIME type → value (`text/plain`
    /// always; `text/html` for a DataFrame; images as base64).
    Result { data: BTreeMap<String, String> },
    /// `display(x)` and each matplotlib figure (`image/png` base64 + `text/plain`).
    DisplayData { data: BTreeMap<String, String> },
    /// The cell raised (or timed out: `TimeoutError`; its kernel died: `DeadKernelError`).
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
}

/// A chat message (OpenAI's shape): `role` is system, user, assistant or tool.
#[allow(dead_code)] // documentation only: the real type is dsbox_agent::model::Message
#[derive(Serialize, ToSchema)]
pub struct MessageDoc {
    pub role: String,
    pub content: String,
    /// Tool calls of an assistant message (`tools` scaffold).
    #[schema(nullable = false)]
    pub tool_calls: Option<Vec<ToolCallDoc>>,
    /// The call a `tool` message answers.
    #[schema(nullable = false)]
    pub tool_call_id: Option<String>,
}

#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
pub struct ToolCallDoc {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// A size in bytes: a number, or a string with a unit (`512M`, `2G`, `64KiB`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self, field: &str) -> Result<u64, AppError> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => parse_size(s).ok_or_else(|| {
                AppError::BadRequest(format!(
                    "`{field}`: cannot read `{s}` as a size: give bytes or a number with K, M or G (e.g. 512M)"
                ))
            }),
        }
    }
}

/// `512M`, `2G`, `2GiB`, `100k`, `4096` → bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = value * mult as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A timeout in seconds from a request, within (0, max]; `None`: `default`.
pub fn timeout_secs(
    value: Option<f64>,
    default: Duration,
    max: Duration,
) -> Result<Duration, AppError> {
    match value {
        None => Ok(default.min(max)),
        Some(v) if v.is_finite() && v > 0.0 => {
            let d = Duration::from_secs_f64(v);
            if d > max {
                Err(AppError::BadRequest(format!(
                    "`timeout` {v} s is more than this server allows ({} s, --max-exec-timeout)",
                    max.as_secs()
                )))
            } else {
                Ok(d)
            }
        }
        Some(v) => Err(AppError::BadRequest(format!(
            "`timeout` must be a positive number of seconds, got {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_cli() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5X"), None);
    }

    #[test]
    fn timeouts_stay_within_the_cap() {
        let d = Duration::from_secs(180);
        let max = Duration::from_secs(600);
        assert_eq!(timeout_secs(None, d, max).unwrap(), d);
        assert_eq!(
            timeout_secs(Some(1.5), d, max).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(timeout_secs(Some(0.0), d, max).is_err());
        assert!(timeout_secs(Some(-1.0), d, max).is_err());
        assert!(timeout_secs(Some(f64::NAN), d, max).is_err());
        assert!(timeout_secs(Some(601.0), d, max).is_err());
    }
}
