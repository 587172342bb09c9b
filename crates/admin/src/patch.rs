//! PATCH semantics: a JSON merge patch (RFC 7396) of the stored value, or,
//! on a sub path (`/routes/1/plugins`), the replacement of that one field.

use serde_json::{Map, Value};

/// RFC 7396: objects merge recursively, `null` removes, anything else
/// replaces (arrays included).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Replace the field at `sub_path` (`plugins` or `plugins/key-auth`) with
/// `value`, creating intermediate objects. Fails when the path crosses a
/// value that is not an object.
pub fn replace_at(target: &mut Value, sub_path: &str, value: Value) -> Result<(), String> {
    let segments: Vec<&str> = sub_path.split('/').filter(|s| !s.is_empty()).collect();
    let Some((last, parents)) = segments.split_last() else {
        *target = value;
        return Ok(());
    };
    let mut at = target;
    for (i, seg) in parents.iter().enumerate() {
        let Value::Object(obj) = at else {
            return Err(format!("invalid sub path: {}", segments[..i].join("/")));
        };
        at = obj
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(obj) = at else {
        return Err(format!("invalid sub path: {}", parents.join("/")));
    };
    obj.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_removes_nulls_and_replaces_arrays() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": true});
        merge_patch(
            &mut v,
            &json!({"a": {"c": 3, "d": 4}, "list": [3], "gone": null}),
        );
        assert_eq!(v, json!({"a": {"b": 1, "c": 3, "d": 4}, "list": [3]}));
    }

    #[test]
    fn a_sub_path_replaces_only_that_field() {
        let mut v = json!({"methods": ["GET"], "plugins": {"a": {}, "b": {}}});
        replace_at(&mut v, "methods", json!(["POST"])).unwrap();
        replace_at(&mut v, "plugins/a", json!({"x": 1})).unwrap();
        assert_eq!(
            v,
            json!({"methods": ["POST"], "plugins": {"a": {"x": 1}, "b": {}}})
        );
    }

    #[test]
    fn a_sub_path_through_a_scalar_is_refused() {
        let mut v = json!({"uri": "/a"});
        assert!(replace_at(&mut v, "uri/x", json!(1)).is_err());
    }
}
