//! Where a response's prediction is, how it falls into bins, and which
//! segment a request belongs to. Configuration types, their validation and
//! the pure extraction and binning the filter runs per response.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::headers;

/// `prediction` in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionConfig {
    /// Where the prediction is.
    pub from: PredictionSource,
    /// Bodies longer than this are not parsed (counted as `unparsed`).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
    /// How predictions are counted.
    pub bins: Bins,
}

pub fn default_max_body() -> u32 {
    64 * 1024
}

/// `{"header": "x-prediction"}` or `{"json_pointer": "/scores/0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PredictionSource {
    /// A response header.
    Header(String),
    /// An RFC 6901 JSON pointer into a JSON response body.
    JsonPointer(String),
}

/// `{"numeric": [edges…]}` or `{"categorical": [labels…]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Bins {
    /// Strictly rising edges e0 < e1 < … < e(k-1): bin `b0` is below e0, `bi`
    /// is [e(i-1), e(i)), `bk` is e(k-1) and above.
    Numeric(Vec<f64>),
    /// Labels counted by name; anything else is `other`.
    Categorical(Vec<String>),
}

/// Most bins (edges or labels) accepted.
pub const MAX_BINS: usize = 64;
/// Most segment values accepted.
pub const MAX_SEGMENTS: usize = 32;

/// `segment` in the plugin configuration: an optional request header whose
/// allowed values split the per-version counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub header: String,
    /// Allowed values; any other value, or none, counts as `other`.
    pub values: Vec<String>,
}

/// The name of the catch-all segment and category.
pub const OTHER: &str = "other";
/// The bin of a prediction that could not be read.
pub const UNPARSED: &str = "unparsed";

fn is_metric_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A prediction as read from a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction<'a> {
    Number(f64),
    Label(std::borrow::Cow<'a, str>),
}

/// The lowered `prediction` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionPlan {
    pub from: PredictionSource,
    pub max_body_bytes: usize,
    pub bins: Bins,
    /// Bin names, in index order; the last is `unparsed`.
    pub names: Vec<String>,
}

impl PredictionConfig {
    pub fn validate(&self) -> Result<PredictionPlan, ConfigError> {
        let from = match &self.from {
            PredictionSource::Header(h) => PredictionSource::Header(
                headers::header_name(h).map_err(|e| ConfigError::invalid("prediction.from.header", e))?,
            ),
            PredictionSource::JsonPointer(p) => {
                if !(p.is_empty() || p.starts_with('/')) {
                    return Err(ConfigError::invalid(
                        "prediction.from.json_pointer",
                        format!("`{p}` is not a JSON pointer: it must be empty or start with '/'"),
                    ));
                }
                PredictionSource::JsonPointer(p.clone())
            }
        };
        if self.max_body_bytes == 0 || self.max_body_bytes > 1 << 20 {
            return Err(ConfigError::invalid("prediction.max_body_bytes", "must be within 1..=1048576"));
        }
        let mut names = match &self.bins {
            Bins::Numeric(edges) => {
                if edges.is_empty() || edges.len() > MAX_BINS {
                    return Err(ConfigError::invalid(
                        "prediction.bins.numeric",
                        format!("needs 1 to {MAX_BINS} edges"),
                    ));
                }
                if let Some(i) = edges.iter().position(|e| !e.is_finite()) {
                    return Err(ConfigError::invalid(
                        format!("prediction.bins.numeric[{i}]"),
                        "must be a finite number",
                    ));
                }
                if let Some(i) = edges.windows(2).position(|w| w[0] >= w[1]) {
                    return Err(ConfigError::invalid(
                        format!("prediction.bins.numeric[{}]", i + 1),
                        "edges must rise strictly",
                    ));
                }
                (0..=edges.len()).map(|i| format!("b{i}")).collect::<Vec<_>>()
            }
            Bins::Categorical(labels) => {
                if labels.is_empty() || labels.len() > MAX_BINS {
                    return Err(ConfigError::invalid(
                        "prediction.bins.categorical",
                        format!("needs 1 to {MAX_BINS} labels"),
                    ));
                }
                for (i, l) in labels.iter().enumerate() {
                    let field = format!("prediction.bins.categorical[{i}]");
                    if !is_metric_part(l) {
                        return Err(ConfigError::invalid(field, format!("`{l}`: labels are 1-64 of [A-Za-z0-9_-]")));
                    }
                    if l == OTHER || l == UNPARSED || labels[..i].contains(l) {
                        return Err(ConfigError::invalid(field, format!("`{l}` is reserved or repeated")));
                    }
                }
                labels.iter().cloned().chain([OTHER.to_string()]).collect()
            }
        };
        names.push(UNPARSED.to_string());
        Ok(PredictionPlan { from, max_body_bytes: self.max_body_bytes as usize, bins: self.bins.clone(), names })
    }
}

impl PredictionPlan {
    pub fn unparsed(&self) -> usize {
        self.names.len() - 1
    }

    /// The bin of a prediction.
    pub fn bin(&self, p: &Prediction<'_>) -> usize {
        match (&self.bins, p) {
            (Bins::Numeric(edges), Prediction::Number(x)) if x.is_finite() => edges.partition_point(|e| e <= x),
            (Bins::Numeric(edges), Prediction::Label(s)) => match s.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => edges.partition_point(|e| *e <= x),
                _ => self.unparsed(),
            },
            (Bins::Categorical(labels), Prediction::Label(s)) => {
                labels.iter().position(|l| l == s.as_ref()).unwrap_or(labels.len())
            }
            (Bins::Categorical(labels), Prediction::Number(x)) => {
                let s = x.to_string();
                labels.iter().position(|l| *l == s).unwrap_or(labels.len())
            }
            _ => self.unparsed(),
        }
    }

    /// The bin of a header value.
    pub fn bin_of_header(&self, value: Option<&[u8]>) -> usize {
        match value.and_then(|v| std::str::from_utf8(v).ok()) {
            Some(v) => self.bin(&Prediction::Label(v.trim().into())),
            None => self.unparsed(),
        }
    }

    /// The bin of a JSON body at the configured pointer.
    pub fn bin_of_json(&self, body: &[u8]) -> usize {
        let PredictionSource::JsonPointer(pointer) = &self.from else { return self.unparsed() };
        if body.len() > self.max_body_bytes {
            return self.unparsed();
        }
        match extract_json(body, pointer) {
            Some(p) => self.bin(&p),
            None => self.unparsed(),
        }
    }
}

/// The value at `pointer` in a JSON document: a number, or a string / bool
/// as a label. Anything else (absent, null, object, invalid JSON) is `None`.
pub fn extract_json<'a>(body: &'a [u8], pointer: &str) -> Option<Prediction<'a>> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    match doc.pointer(pointer)? {
        serde_json::Value::Number(n) => n.as_f64().map(Prediction::Number),
        serde_json::Value::String(s) => Some(Prediction::Label(s.clone().into())),
        serde_json::Value::Bool(b) => Some(Prediction::Label(b.to_string().into())),
        _ => None,
    }
}

/// The lowered `segment` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPlan {
    pub header: String,
    /// Allowed values then `other`.
    pub names: Vec<String>,
}

impl SegmentConfig {
    pub fn validate(&self) -> Result<SegmentPlan, ConfigError> {
        let header = headers::header_name(&self.header).map_err(|e| ConfigError::invalid("segment.header", e))?;
        if self.values.is_empty() || self.values.len() > MAX_SEGMENTS {
            return Err(ConfigError::invalid("segment.values", format!("needs 1 to {MAX_SEGMENTS} values")));
        }
        for (i, v) in self.values.iter().enumerate() {
            if !is_metric_part(v) || v == OTHER || self.values[..i].contains(v) {
                return Err(ConfigError::invalid(
                    format!("segment.values[{i}]"),
                    format!("`{v}`: values are distinct, 1-64 of [A-Za-z0-9_-], not `other`"),
                ));
            }
        }
        Ok(SegmentPlan { header, names: self.values.iter().cloned().chain([OTHER.to_string()]).collect() })
    }
}

impl SegmentPlan {
    /// Index into `names` for a header value (absent or unknown: `other`).
    pub fn segment_of(&self, value: Option<&[u8]>) -> usize {
        let other = self.names.len() - 1;
        value.map_or(other, |v| self.names[..other].iter().position(|n| n.as_bytes() == v).unwrap_or(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(edges: &[f64], from: PredictionSource) -> PredictionPlan {
        PredictionConfig { from, max_body_bytes: 1024, bins: Bins::Numeric(edges.to_vec()) }.validate().unwrap()
    }

    fn categorical(labels: &[&str]) -> PredictionPlan {
        PredictionConfig {
            from: PredictionSource::JsonPointer("/label".into()),
            max_body_bytes: 1024,
            bins: Bins::Categorical(labels.iter().map(|s| s.to_string()).collect()),
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn numeric_bins_follow_the_edges() {
        let p = numeric(&[0.25, 0.5, 0.75], PredictionSource::Header("x-prediction".into()));
        assert_eq!(p.names, ["b0", "b1", "b2", "b3", "unparsed"]);
        let bin = |x: f64| p.bin(&Prediction::Number(x));
        assert_eq!([bin(-1.0), bin(0.25), bin(0.3), bin(0.5), bin(0.75), bin(9.0)], [0, 1, 1, 2, 3, 3]);
        assert_eq!(p.bin(&Prediction::Number(f64::NAN)), 4);
        assert_eq!(p.bin_of_header(Some(b" 0.6 ")), 2);
        assert_eq!(p.bin_of_header(Some(b"high")), 4);
        assert_eq!(p.bin_of_header(None), 4);
    }

    #[test]
    fn categorical_bins_have_other_and_unparsed() {
        let p = categorical(&["cat", "dog"]);
        assert_eq!(p.names, ["cat", "dog", "other", "unparsed"]);
        assert_eq!(p.bin_of_json(br#"{"label":"dog"}"#), 1);
        assert_eq!(p.bin_of_json(br#"{"label":"cow"}"#), 2);
        assert_eq!(p.bin_of_json(br#"{"label":null}"#), 3);
        assert_eq!(p.bin_of_json(br#"{"other":"dog"}"#), 3);
        assert_eq!(p.bin_of_json(b"not json"), 3);
        assert_eq!(p.bin_of_json(br#"{"label":true}"#), 2);
    }

    #[test]
    fn json_pointer_reaches_into_nested_bodies() {
        let p = numeric(&[0.5], PredictionSource::JsonPointer("/result/scores/1".into()));
        assert_eq!(p.bin_of_json(br#"{"result":{"scores":[0.1,0.9]}}"#), 1);
        assert_eq!(p.bin_of_json(br#"{"result":{"scores":[0.1,"0.2"]}}"#), 0);
        assert_eq!(p.bin_of_json(br#"{"result":{"scores":[0.1]}}"#), 2);
    }

    #[test]
    fn oversized_bodies_are_unparsed() {
        let p = numeric(&[0.5], PredictionSource::JsonPointer("/x".into()));
        let big = format!("{{\"x\":0.9,\"pad\":\"{}\"}}", "a".repeat(2000));
        assert_eq!(p.bin_of_json(big.as_bytes()), p.unparsed());
    }

    #[test]
    fn bad_configurations_name_their_field() {
        let bad = |bins: Bins, from: PredictionSource| {
            PredictionConfig { from, max_body_bytes: 10, bins }.validate().unwrap_err().field().to_string()
        };
        let h = || PredictionSource::Header("x-p".into());
        assert_eq!(bad(Bins::Numeric(vec![]), h()), "prediction.bins.numeric");
        assert_eq!(bad(Bins::Numeric(vec![1.0, 1.0]), h()), "prediction.bins.numeric[1]");
        assert_eq!(bad(Bins::Numeric(vec![f64::INFINITY]), h()), "prediction.bins.numeric[0]");
        assert_eq!(bad(Bins::Categorical(vec!["a b".into()]), h()), "prediction.bins.categorical[0]");
        assert_eq!(bad(Bins::Categorical(vec!["a".into(), "a".into()]), h()), "prediction.bins.categorical[1]");
        assert_eq!(bad(Bins::Categorical(vec!["other".into()]), h()), "prediction.bins.categorical[0]");
        assert_eq!(
            bad(Bins::Numeric(vec![1.0]), PredictionSource::Header("bad header".into())),
            "prediction.from.header"
        );
        assert_eq!(
            bad(Bins::Numeric(vec![1.0]), PredictionSource::JsonPointer("x".into())),
            "prediction.from.json_pointer"
        );
    }

    #[test]
    fn segments_are_bounded_with_other() {
        let s =
            SegmentConfig { header: "X-Tier".into(), values: vec!["free".into(), "pro".into()] }.validate().unwrap();
        assert_eq!(s.header, "x-tier");
        assert_eq!(s.names, ["free", "pro", "other"]);
        assert_eq!([s.segment_of(Some(b"pro")), s.segment_of(Some(b"gold")), s.segment_of(None)], [1, 2, 2]);
        let e = SegmentConfig { header: "x".into(), values: vec!["other".into()] }.validate().unwrap_err();
        assert_eq!(e.field(), "segment.values[0]");
    }
}
