//! Values as the deployment file writes them and as the plan writes them back: a JSON
//! document as the YAML tree the readers walk, a scalar as text, words split the shell's way,
//! and durations in seconds.

use std::time::Duration;

use yaml_rust2::Yaml;

/// Splits words the shell's way, as far as quotes go: `A=1 "B=two words" 'C=3'`, or
/// `sh -c "exec lastcall demo"`.
pub(super) fn split_quoted(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    for c in value.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (_, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Converts a JSON document to the YAML tree the readers walk.
pub(super) fn from_json(value: &serde_json::Value) -> Yaml {
    use serde_json::Value;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(from_json).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

/// A YAML scalar as text, whatever its YAML type (`8080`, `"8080"`, `true`).
pub(super) fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

pub(super) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_the_shells_way_as_far_as_quotes_go() {
        assert_eq!(
            split_quoted(r#"A=1 "B=two words" 'C=3'"#),
            ["A=1", "B=two words", "C=3"]
        );
        assert_eq!(
            split_quoted(r#"sh -c "exec lastcall demo""#),
            ["sh", "-c", "exec lastcall demo"]
        );
    }
}
