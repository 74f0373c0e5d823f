//! What the REST APIs tell a client about a bad JSON body: which field is wrong. Shared by the
//! engine's API and the services' (`orderflow-service-kit`), so both name fields alike.

/// Where the first NUL character (`\u0000`) of a JSON body is, if it has one: PostgreSQL text
/// and jsonb cannot store it, so such a body is refused up front instead of failing its insert
/// with a 500. Only bodies that spell the escape are walked.
pub fn nul_in(body: &[u8]) -> Option<String> {
    if !body.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return None;
    }
    fn walk(v: &serde_json::Value, path: &str) -> Option<String> {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match v {
            serde_json::Value::String(s) if s.contains('\0') => Some(path.to_owned()),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, x)| {
                if k.contains('\0') {
                    Some(join(k))
                } else {
                    walk(x, &join(k))
                }
            }),
            _ => None,
        }
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    walk(&value, "").map(|p| if p.is_empty() { "body".to_owned() } else { p })
}

/// Pulls the field name out of serde's "missing field `x`" / "unknown field `x`" / "duplicate
/// field `x`" messages. Other data errors quote a value ("invalid type: integer `1`"), not a
/// field, so they blame `whole` (the body or the query).
pub fn data_field(msg: &str, whole: &str) -> String {
    ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|p| msg.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map_or_else(|| whole.to_owned(), |(field, _)| field.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_found_at_its_dotted_path() {
        assert_eq!(nul_in(br#"{"a": "x"}"#), None);
        assert_eq!(nul_in(br#"{"a": "x\u0000"}"#).as_deref(), Some("a"));
        assert_eq!(
            nul_in(br#"{"items": [{"id": "ok"}, {"id": "b\u0000d"}]}"#).as_deref(),
            Some("items[1].id")
        );
        assert_eq!(nul_in(br#"{"k\u0000": 1}"#).as_deref(), Some("k\u{0}"));
        assert_eq!(nul_in(br#""\u0000""#).as_deref(), Some("body"));
        // Spelled in the body but not a NUL once decoded.
        assert_eq!(nul_in(br#"{"a": "\\u0000"}"#), None);
    }

    #[test]
    fn the_field_serde_names_is_the_one_blamed() {
        assert_eq!(data_field("missing field `type` at line 1", "body"), "type");
        assert_eq!(
            data_field("unknown field `colour`, expected", "body"),
            "colour"
        );
        assert_eq!(data_field("invalid type: integer `1`", "body"), "body");
    }
}
