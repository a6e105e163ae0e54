//! Field-level changes ([`ChangeType::Patch`](lsync_protocol::ChangeType::Patch)): the
//! encoding of the fields a change sets and the merge of those fields into a stored record
//! (docs/architecture.md, "Field-level changes"; docs/protocol.md, `Propose`).
//!
//! A record's data is a MessagePack map of its fields by name (rmp-serde, named fields); a
//! patch is a MessagePack map of some of those fields, each value encoded as in the record.
//! Merging copies the patch's values, byte for byte, over the record's, keeping the record's
//! field order, so a merged record shows each patched field with exactly the patch's bytes
//! ([`fields_match`] relies on it).

use crate::error::{Result, StorageError};

/// One field of an encoded map: its name and its value's encoding.
type Field<'a> = (&'a str, &'a [u8]);

fn invalid(what: &str, why: impl std::fmt::Display) -> StorageError {
    StorageError::InvalidChange(format!("{what}: {why}"))
}

/// The fields of the MessagePack map `data`, in order: names are strings, each at most once,
/// and nothing follows the map. `what` names the data in errors (`patch`, `record`).
fn parse<'a>(data: &'a [u8], what: &str) -> Result<Vec<Field<'a>>> {
    let mut rest = data;
    let len = rmp::decode::read_map_len(&mut rest)
        .map_err(|e| invalid(what, format!("not a MessagePack map of fields ({e})")))?;
    let mut fields: Vec<Field<'a>> = Vec::with_capacity((len as usize).min(64));
    for _ in 0..len {
        let name_len = rmp::decode::read_str_len(&mut rest)
            .map_err(|e| invalid(what, format!("a field name is not a string ({e})")))?;
        let name_len = name_len as usize;
        if rest.len() < name_len {
            return Err(invalid(what, "truncated field name"));
        }
        let (name, after) = rest.split_at(name_len);
        let name =
            std::str::from_utf8(name).map_err(|_| invalid(what, "a field name is not UTF-8"))?;
        if fields.iter().any(|(n, _)| *n == name) {
            return Err(invalid(what, format!("field {name:?} appears twice")));
        }
        rest = after;
        let before = rest;
        {
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de)
                .map_err(|e| invalid(what, format!("field {name:?}: undecodable value ({e})")))?;
        }
        let value = &before[..before.len() - rest.len()];
        fields.push((name, value));
    }
    if !rest.is_empty() {
        return Err(invalid(what, "bytes after the map of fields"));
    }
    Ok(fields)
}

/// Checks that `patch` is a patch: a MessagePack map of at least one field, each named by a
/// string at most once, values decodable.
///
/// # Errors
/// [`StorageError::InvalidChange`] saying why not.
pub fn check_patch(patch: &[u8]) -> Result<()> {
    if parse(patch, "patch")?.is_empty() {
        return Err(invalid("patch", "it sets no field"));
    }
    Ok(())
}

/// The names of the fields `patch` sets, in its order (empty if it is not a patch); of a
/// record, its fields.
pub fn patch_fields(patch: &[u8]) -> Vec<String> {
    parse(patch, "patch")
        .map(|fields| fields.into_iter().map(|(name, _)| name.to_owned()).collect())
        .unwrap_or_default()
}

/// `record` with the fields of `patch` set to the patch's values: the record's fields in the
/// record's order, each patched one with the patch's value bytes.
///
/// # Errors
/// [`StorageError::InvalidChange`] if either is not a map of fields ([`check_patch`]), or if
/// the patch sets a field the record does not have (a patch changes fields; it does not add
/// them, so a misspelt name is refused instead of lost).
pub fn merge(record: &[u8], patch: &[u8]) -> Result<Vec<u8>> {
    let base = parse(record, "record")?;
    let set = parse(patch, "patch")?;
    if set.is_empty() {
        return Err(invalid("patch", "it sets no field"));
    }
    if let Some((name, _)) = set.iter().find(|(name, _)| base.iter().all(|(n, _)| n != name)) {
        return Err(invalid("patch", format!("the record has no field {name:?}")));
    }
    let mut out = Vec::with_capacity(record.len() + patch.len());
    let len = u32::try_from(base.len()).map_err(|_| invalid("record", "too many fields"))?;
    rmp::encode::write_map_len(&mut out, len).map_err(|e| invalid("record", e))?;
    for (name, value) in &base {
        rmp::encode::write_str(&mut out, name).map_err(|e| invalid("record", e))?;
        let value = set.iter().find(|(n, _)| n == name).map_or(*value, |(_, v)| *v);
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// The patch that sets `names` of `record` to the record's values (in the record's order).
///
/// # Errors
/// [`StorageError::InvalidChange`] if `record` is not a map of fields, a name is not one of
/// its fields, or `names` is empty.
pub fn extract(record: &[u8], names: &[String]) -> Result<Vec<u8>> {
    let base = parse(record, "record")?;
    if names.is_empty() {
        return Err(invalid("patch", "it sets no field"));
    }
    if let Some(name) = names.iter().find(|name| base.iter().all(|(n, _)| n != name)) {
        return Err(invalid("record", format!("it has no field {name:?}")));
    }
    let picked: Vec<&Field<'_>> =
        base.iter().filter(|(n, _)| names.iter().any(|m| m == n)).collect();
    let mut out = Vec::with_capacity(record.len());
    let len = u32::try_from(picked.len()).map_err(|_| invalid("record", "too many fields"))?;
    rmp::encode::write_map_len(&mut out, len).map_err(|e| invalid("patch", e))?;
    for (name, value) in picked {
        rmp::encode::write_str(&mut out, name).map_err(|e| invalid("patch", e))?;
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// Whether `record` holds every field of `patch` with the patch's value bytes: whether it is
/// what [`merge`] made of some row and this patch (false if either is not a map of fields).
pub fn fields_match(record: &[u8], patch: &[u8]) -> bool {
    let (Ok(base), Ok(set)) = (parse(record, "record"), parse(patch, "patch")) else {
        return false;
    };
    !set.is_empty()
        && set.iter().all(|(name, value)| base.iter().any(|(n, v)| n == name && v == value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{decode, encode};
    use crate::models::Tag;

    fn tag(name: &str, color: Option<&str>) -> Vec<u8> {
        encode(&Tag { id: "t1".into(), name: name.into(), color: color.map(str::to_owned) })
    }

    #[test]
    fn merge_sets_only_the_named_fields() {
        let merged = merge(
            &tag("old", Some("#ff0000")),
            &encode(&serde_json::json!({
                "name": "new"
            })),
        )
        .unwrap();
        let tag: Tag = decode(&merged).unwrap();
        assert_eq!(tag, Tag { id: "t1".into(), name: "new".into(), color: Some("#ff0000".into()) });
    }

    /// The example of docs/protocol.md (`Propose`, field-level changes), byte for byte.
    #[test]
    fn the_documented_patch_encoding_is_what_update_fields_writes() {
        let change =
            crate::Change::update_fields("tag", "t1", &serde_json::json!({ "color": "#ff0000" }));
        let documented = [
            0x81, 0xa5, 0x63, 0x6f, 0x6c, 0x6f, 0x72, 0xa7, 0x23, 0x66, 0x66, 0x30, 0x30, 0x30,
            0x30,
        ];
        assert_eq!(change.data, documented);
        let merged = merge(&tag("a", None), &documented).unwrap();
        let mut expected = vec![0x83];
        expected.extend_from_slice(&encode(&"id")[..]);
        expected.extend_from_slice(&encode(&"t1")[..]);
        expected.extend_from_slice(&encode(&"name")[..]);
        expected.extend_from_slice(&encode(&"a")[..]);
        expected.extend_from_slice(&documented[1..]);
        assert_eq!(merged, expected, "header, then the record's fields in order");
    }

    #[test]
    fn merge_can_set_a_field_to_nil() {
        let merged =
            merge(&tag("a", Some("#ff0000")), &encode(&serde_json::json!({ "color": null })))
                .unwrap();
        assert_eq!(decode::<Tag>(&merged).unwrap().color, None);
    }

    #[test]
    fn merge_refuses_a_field_the_record_lacks() {
        let err = merge(&tag("a", None), &encode(&serde_json::json!({ "colour": "#fff" })));
        assert!(matches!(err, Err(StorageError::InvalidChange(m)) if m.contains("colour")));
    }

    #[test]
    fn a_patch_is_a_non_empty_map_with_unique_string_names() {
        assert!(check_patch(&encode(&serde_json::json!({ "name": "x" }))).is_ok());
        assert!(check_patch(&encode(&serde_json::json!({}))).is_err());
        assert!(check_patch(&encode(&"name")).is_err());
        assert!(check_patch(&encode(&std::collections::BTreeMap::from([(1, 2)]))).is_err());
        // {"name": "x", "name": "y"}
        let twice = [0x82, 0xa4, b'n', b'a', b'm', b'e', 0xa1, b'x', 0xa4, b'n', b'a', b'm', b'e'];
        let mut twice = twice.to_vec();
        twice.extend_from_slice(&[0xa1, b'y']);
        assert!(check_patch(&twice).is_err());
        let mut trailing = encode(&serde_json::json!({ "name": "x" }));
        trailing.push(0xc0);
        assert!(check_patch(&trailing).is_err());
        assert!(check_patch(&[0x81, 0xa4, b'n', b'a']).is_err());
    }

    #[test]
    fn extract_picks_the_named_fields_with_the_records_values() {
        let record = tag("a", Some("#00ff00"));
        let patch = extract(&record, &["color".to_owned()]).unwrap();
        assert_eq!(patch, encode(&serde_json::json!({ "color": "#00ff00" })));
        assert!(fields_match(&record, &patch));
        assert!(extract(&record, &["colour".to_owned()]).is_err());
        assert!(extract(&record, &[]).is_err());
        assert_eq!(
            patch_fields(&record),
            ["id", "name", "color"],
            "a record is a map of fields too"
        );
    }

    #[test]
    fn a_merged_record_matches_its_patch_and_no_other() {
        let patch = encode(&serde_json::json!({ "color": "#00ff00" }));
        let merged = merge(&tag("a", None), &patch).unwrap();
        assert!(fields_match(&merged, &patch));
        assert!(!fields_match(&merged, &encode(&serde_json::json!({ "color": "#0000ff" }))));
        assert!(!fields_match(&tag("a", None), &patch));
        assert_eq!(patch_fields(&patch), ["color"]);
    }
}
