//! Policy enums by name — for config files, reports and the CLI — without any CLI crate: the
//! CLI adapts them (`commands::cli::named`), the policies stay plain data.

/// An enum whose every value has a stable name and a line of help.
pub trait Named: Sized + Copy + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    fn help(self) -> &'static str;
    /// The value named `s` (any case).
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s))
    }
}

#[cfg(test)]
mod tests {
    use super::Named;
    use crate::policy::backend_choice::Backend;
    use crate::policy::routing::ModelType;
    use crate::policy::sharding::Strategy;

    /// Names round-trip and match the serde names the config files use.
    fn check<T: Named + PartialEq + std::fmt::Debug + serde::Serialize>() {
        for &v in T::ALL {
            assert_eq!(T::from_name(v.name()), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(v.name()), "{v:?}");
            assert!(!v.help().is_empty(), "{v:?} has help");
        }
        assert_eq!(T::from_name("no such value"), None);
    }

    #[test]
    fn every_named_policy_enum_round_trips() {
        check::<Backend>();
        check::<Strategy>();
        check::<ModelType>();
        assert_eq!(Backend::from_name("WASM-CPU"), Some(Backend::WasmCpu));
    }
}
