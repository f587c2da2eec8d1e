//! The CLI's view of the policy enums: clap value parsers over `policy::Named`, so `policy/`
//! stays free of the CLI crate.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::policy::Named;

/// A clap value parser taking any name of `T` (help lists each with its line).
pub fn named<T: Named + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| PossibleValue::new(v.name()).help(v.help())))
        .map(|s| T::from_name(&s).expect("clap only passes a listed name"))
}

/// `--capability KEY=JSON` pairs (a bare word that is not JSON is a string).
pub fn capabilities(pairs: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| anyhow::anyhow!("--capability {p:?}: expected KEY=JSON"))?;
            let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
            Ok((k.to_string(), v))
        })
        .collect()
}
