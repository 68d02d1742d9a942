//! Canonical JSON bytes (RFC 8785, the JSON Canonicalization Scheme) for the
//! subset of JSON the ledger uses: objects, arrays, strings, booleans, `null`
//! and integers of at most 53 bits. Floating-point numbers are refused, so the
//! ECMAScript number formatting of RFC 8785 §3.2.2.3 reduces to plain decimal.
//!
//! Decoding is strict: [`from_canonical_bytes`] parses and then re-encodes, and
//! rejects the input unless the bytes are identical. A stored entry therefore
//! has exactly one byte representation, which is what its leaf hash and its
//! signatures cover.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Largest integer that survives a round trip through an IEEE double (I-JSON).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value could not be encoded or decoded canonically.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// The bytes are not JSON of the expected shape.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A number is fractional or outside ±(2^53 − 1).
    #[error("number {0} is not an integer within ±(2^53 - 1)")]
    UnsupportedNumber(String),
    /// The bytes parse, but are not the canonical encoding of what they contain.
    #[error("JSON is not in canonical (RFC 8785) form")]
    NotCanonical,
}

/// The canonical JSON bytes of a value.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let tree = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_value(&tree, &mut out)?;
    Ok(out)
}

/// Decodes a value, accepting only its canonical JSON bytes.
pub fn from_canonical_bytes<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, CanonicalError> {
    let value: T = serde_json::from_slice(bytes)?;
    if to_canonical_bytes(&value)? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(value)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let text = if let Some(u) = n.as_u64().filter(|u| *u <= MAX_SAFE_INTEGER) {
                u.to_string()
            } else if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER) {
                i.to_string()
            } else {
                return Err(CanonicalError::UnsupportedNumber(n.to_string()));
            };
            out.extend_from_slice(text.as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // RFC 8785 §3.2.3: members sorted by the UTF-16 code units of their names.
            let mut members: Vec<(Vec<u16>, &String, &Value)> = map
                .iter()
                .map(|(k, v)| (k.encode_utf16().collect(), k, v))
                .collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (_, key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// RFC 8785 §3.2.2.2: escape only `"`, `\` and control characters, with the
/// short forms where JSON has them and lower-case `\u00xx` otherwise.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buffer = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_removed() {
        let value = json!({"b": 1, "a": [true, null, "x"], "c": {"z": 0, "y": -5}});
        let bytes = to_canonical_bytes(&value).unwrap();
        assert_eq!(bytes, br#"{"a":[true,null,"x"],"b":1,"c":{"y":-5,"z":0}}"#);
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+E000 sorts before U+1F600 in UTF-8 byte order but after it in UTF-16
        // (the emoji is the surrogate pair D83D DE00), and RFC 8785 uses UTF-16.
        let value = json!({"\u{e000}": 1, "\u{1f600}": 2, "a": 3});
        let text = String::from_utf8(to_canonical_bytes(&value).unwrap()).unwrap();
        assert_eq!(text, "{\"a\":3,\"\u{1f600}\":2,\"\u{e000}\":1}");
    }

    #[test]
    fn strings_escape_only_what_rfc8785_escapes() {
        let value = json!("q\"b\\s/\u{1}\n\u{7f}é€");
        let text = String::from_utf8(to_canonical_bytes(&value).unwrap()).unwrap();
        assert_eq!(text, "\"q\\\"b\\\\s/\\u0001\\n\u{7f}é€\"");
    }

    #[test]
    fn floats_and_huge_integers_are_refused() {
        assert!(to_canonical_bytes(&json!(1.5)).is_err());
        assert!(to_canonical_bytes(&json!(MAX_SAFE_INTEGER + 1)).is_err());
        assert!(to_canonical_bytes(&json!(MAX_SAFE_INTEGER)).is_ok());
        assert!(to_canonical_bytes(&json!(-(MAX_SAFE_INTEGER as i64))).is_ok());
    }

    #[test]
    fn decoding_requires_canonical_bytes() {
        let ok: Value = from_canonical_bytes(br#"{"a":1,"b":"x"}"#).unwrap();
        assert_eq!(ok, json!({"a": 1, "b": "x"}));
        for bad in [
            &br#"{"b":"x","a":1}"#[..],
            br#"{"a": 1,"b":"x"}"#,
            br#"{"a":1,"b":"\u0078"}"#,
            br#"{"a":1.0,"b":"x"}"#,
            b"{\"a\":1,\"b\":\"x\"}\n",
        ] {
            assert!(
                from_canonical_bytes::<Value>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
