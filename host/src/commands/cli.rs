//! The CLI's view of the policy enums: clap value parsers over `policy::Named`, so `policy/`
//! stays free of the CLI crate.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::policy::Named;

/// A clap value parser taking any name of `T` (help lists each with its line).
pub fn named<T: Named + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| PossibleValue::new(v.name()).help(v.help())))
        .map(|s| T::from_name(&s).expect("clap only passes a listed name"))
}
