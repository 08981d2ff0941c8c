//! The stored form of a chain's settings (the `config` column): its [`ChainSettings`] plus its place
//! in the mission (`name`, `after`), written when a chain is created or reconfigured and read when it
//! is resumed or claimed.

use super::ChainSettings;

/// A chain's settings as the store keeps them.
pub fn to_stored(name: &str, after: &[String], settings: &ChainSettings) -> serde_json::Value {
    let mut v = serde_json::to_value(settings).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("name".into(), name.into());
        o.insert("after".into(), serde_json::json!(after));
    }
    v
}

/// The settings back from their stored form (extra keys such as `name` are ignored). An error
/// names the key it is about (`max_turns: invalid type: …`).
pub fn from_stored(
    v: &serde_json::Value,
) -> Result<ChainSettings, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(v)
}

/// The `after` list kept with the settings.
pub fn after_of(v: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(v["after"].clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_stored_value_is_named_by_its_key() {
        let e = from_stored(&serde_json::json!({"max_turns": "many"})).unwrap_err();
        assert!(e.to_string().starts_with("max_turns: invalid type"), "{e}");
    }

    #[test]
    fn settings_survive_their_stored_form() {
        let loaded =
            crate::config::load_operator(None, &Default::default(), &Default::default()).unwrap();
        let s = loaded
            .plan_for_task("t", &Default::default())
            .unwrap()
            .chains[0]
            .settings
            .clone();
        let v = to_stored("main", &["a".into()], &s);
        assert_eq!(v["name"], "main");
        assert_eq!(after_of(&v), ["a"]);
        assert_eq!(from_stored(&v).unwrap(), s);
    }
}
