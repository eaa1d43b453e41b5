//! Value types shared by every Istio API: durations, ports, string matches,
//! percentages, selectors and the free-form status.
//!
//! Istio's protos become JSON through protojson, so a `google.protobuf.Duration`
//! is written `"7s"`, a `uint32` port may come from YAML as `9080` or `"9080"`,
//! and a oneof is an object with exactly one of its fields set. These types
//! accept exactly that and keep enough of the input to write it back unchanged.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as Istio writes it: Go's `time.ParseDuration` syntax, which is
/// what Istio's protojson accepts ("7s", "1.5s", "100ms", "1h30m").
///
/// The text is kept so that serializing gives back what the user wrote.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

impl Duration {
    /// Parses Go duration syntax. Negative durations are refused: no Istio
    /// field accepts one.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let value = parse_go_duration(text)?;
        Ok(Self {
            text: text.to_string(),
            value,
        })
    }

    pub fn from_std(value: std::time::Duration) -> Self {
        let text = if value.subsec_nanos() == 0 {
            format!("{}s", value.as_secs())
        } else if value.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", value.as_millis())
        } else {
            format!("{}ns", value.as_nanos())
        };
        Self { text, value }
    }

    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {} (expected e.g. \"7s\", \"1.5s\", \"100ms\")",
            self.text, self.reason
        )
    }
}

impl std::error::Error for DurationError {}

fn parse_go_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let err = |reason| DurationError {
        text: text.to_string(),
        reason,
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err("empty"));
    }
    if rest.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(err("missing unit"))?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err("malformed number"));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err("number too large"))?
        };
        let mut part = whole
            .checked_mul(nanos_per_unit)
            .ok_or(err("number too large"))?;
        let mut scale = nanos_per_unit;
        for digit in frac.chars().take(18) {
            scale /= 10;
            part += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total.checked_add(part).ok_or(err("number too large"))?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("number too large"))?;
    Ok(std::time::Duration::new(
        secs,
        (total % 1_000_000_000) as u32,
    ))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string" })
    }
}

/// A port number. Istio's protos say `uint32`; YAML written by people often
/// quotes it, so both `9080` and `"9080"` are taken (the CRD schema says
/// int-or-string). Range checks (1-65535) belong to validation, which can name
/// the field; here only "is it a number" is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortNumber(pub u32);

impl PortNumber {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PortNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for PortNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for PortNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let n = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a port number (integer or numeric string)")
        })? {
            Raw::Int(n) => n,
            Raw::Str(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| serde::de::Error::custom(format!("invalid port number {s:?}")))?,
        };
        u32::try_from(n)
            .map(PortNumber)
            .map_err(|_| serde::de::Error::custom(format!("port number {n} out of range")))
    }
}

impl JsonSchema for PortNumber {
    fn schema_name() -> Cow<'static, str> {
        "PortNumber".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

/// Istio's `StringMatch` oneof: exactly one of `exact`, `prefix`, `regex`
/// (RE2 syntax). Validation enforces "exactly one".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2-style regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Istio's `PortSelector`: the port of a destination or of per-port
/// settings, by number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: PortNumber,
}

/// A percentage in [0, 100], with fractions (`value: 0.1`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Labels that select workloads (`selector.matchLabels`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's `PolicyTargetReference` (`targetRef` / `targetRefs`): a Kubernetes
/// Gateway API object a policy attaches to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group; `""` (written out, as Istio's docs do) is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The `status` of every Istio object. Istio writes conditions and
/// validation messages here and its CRDs keep unknown fields, so this is
/// free-form JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IstioStatus(pub serde_json::Value);

impl JsonSchema for IstioStatus {
    fn schema_name() -> Cow<'static, str> {
        "IstioStatus".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        let ms = |s: &str| Duration::parse(s).unwrap().as_std().as_millis();
        assert_eq!(ms("7s"), 7000);
        assert_eq!(ms("1.5s"), 1500);
        assert_eq!(ms("100ms"), 100);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms(".5s"), 500);
        for bad in ["", "7", "7x", "-1s", "1..5s", "s", "abc"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn duration_keeps_its_text() {
        let d: Duration = serde_json::from_str("\"1.50s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1.50s\"");
    }

    #[test]
    fn ports_from_int_or_string() {
        let p: PortNumber = serde_json::from_str("9080").unwrap();
        assert_eq!(p.get(), 9080);
        let p: PortNumber = serde_json::from_str("\"9080\"").unwrap();
        assert_eq!(p.get(), 9080);
        assert!(serde_json::from_str::<PortNumber>("\"http\"").is_err());
        assert!(serde_json::from_str::<PortNumber>("-1").is_err());
    }

    #[test]
    fn string_match_refuses_unknown_keys() {
        assert!(serde_json::from_str::<StringMatch>(r#"{"exakt": "a"}"#).is_err());
    }
}
