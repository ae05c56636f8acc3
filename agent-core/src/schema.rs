//! The JSON Schemas of the step and plan formats, generated once from the Rust types
//! ([`Step`], [`Plan`]) and handed to everyone who needs them: the server's OpenAPI document,
//! the planning prompt, and the LLM providers' structured-output fields
//! ([`ChatRequest::response_schema`](crate::llm::ChatRequest::response_schema)).
//!
//! The schemas are JSON Schema 2020-12 (the dialect of OpenAPI 3.1), self-contained (no `$ref`),
//! without a `$schema` key so they can be embedded as they are. Two things are adjusted after
//! generation so that structured-output implementations understand them: step variants are an
//! `anyOf` (Gemini ignores `oneOf`; the variants exclude each other by their `type` constant
//! anyway), and schemars' Rust-only integer formats (`uint64`, …) are dropped.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

use crate::job::{Plan, Step};

/// The pattern of text without a NUL byte (no process takes one in its argv), in the regex
/// syntax JSON Schema, RE2 (structured-output engines) and Python read the same way.
pub const NO_NUL: &str = r"^[^\x00]*$";

/// [`NO_NUL`], and not blank: at least one character other than ASCII white space.
pub const NOT_BLANK: &str = r"^[^\x00]*[^\x00\t\n\x0b\x0c\r ][^\x00]*$";

static STEP: LazyLock<Value> = LazyLock::new(generate::<Step>);
static PLAN: LazyLock<Value> = LazyLock::new(generate::<Plan>);

/// The JSON Schema of one [`Step`].
pub fn step_schema() -> &'static Value {
    &STEP
}

/// The JSON Schema of a [`Plan`] (`{"steps":[…],"summary":"…"}`), with [`step_schema`] inline.
pub fn plan_schema() -> &'static Value {
    &PLAN
}

fn generate<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.meta_schema = None;
            s.inline_subschemas = true;
        })
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    // The root's title is the Rust name; an embedding names the schema itself.
    if let Value::Object(map) = &mut value {
        map.remove("title");
    }
    tidy(&mut value);
    value
}

/// `oneOf` → `anyOf`; no `format` naming a Rust integer type.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(variants) = map.remove("oneOf") {
                map.insert("anyOf".to_string(), variants);
            }
            let rust_format = map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint") || f.starts_with("int"));
            if rust_format {
                map.remove("format");
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_schema_embeds_the_step_schema() {
        let plan = plan_schema();
        assert_eq!(&plan["properties"]["steps"]["items"], step_schema());
        assert_eq!(plan["additionalProperties"], Value::Bool(false));
        assert_eq!(plan["required"], serde_json::json!(["steps"]));
        assert_eq!(
            plan["properties"]["steps"]["maxItems"],
            crate::job::MAX_STEPS
        );
        let text = plan.to_string();
        assert!(!text.contains("$ref") && !text.contains("oneOf") && !text.contains("uint"));
    }

    #[test]
    fn every_step_type_is_a_variant_that_refuses_extra_fields() {
        let variants = step_schema()["anyOf"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let types: Vec<&str> = variants
            .iter()
            .filter_map(|v| v["properties"]["type"]["const"].as_str())
            .collect();
        assert_eq!(types, crate::job::StepKind::TYPES);
        for v in &variants {
            assert_eq!(v["additionalProperties"], Value::Bool(false), "{v}");
            let timeout = &v["properties"]["timeout_secs"];
            assert_eq!(timeout["minimum"], 1, "{v}");
            assert_eq!(timeout["maximum"], crate::job::MAX_TIMEOUT_SECS, "{v}");
        }
        // write_file has a per-step timeout like the others (the hand-written schema lacked it).
        assert!(variants[2]["properties"].get("timeout_secs").is_some());
    }
}
