//! A JSON body read into a flat, borrowed document that jsonschema validates
//! in place (its `Json` representation trait), instead of a
//! `serde_json::Value` tree.
//!
//! Building a `Value` for a 1 KiB body cost more than proxying it: a heap
//! string per key and per string value, a map per object. Here strings
//! without escapes borrow the body's bytes, and every array element and
//! object member lands in one of two vectors, so a body costs a handful of
//! allocations whatever its shape. The validator is the same jsonschema
//! validator compiled for this representation; only how it reads the
//! instance differs.
//!
//! This is the fast path only. A body it does not vouch for goes the
//! `Value` way ([`super::json_body`]), which gives the error message, and
//! re-encodes what other parsers could read differently:
//!
//! - any parse error (the `Value` path reports it);
//! - an object naming a key twice, or wider than [`MAX_MEMBERS`] (a wide
//!   object makes jsonschema's lookups linear scans here);
//! - a number that [`Notes::numbers_exact`] does not vouch for.

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::json_body::Notes;

/// Members an object may have on the fast path. Duplicate keys are found
/// by comparing each key with those before it, at most 496 comparisons for
/// an object this wide.
const MAX_MEMBERS: usize = 32;

/// jsonschema's handle on this representation.
pub(super) struct Borrowed;

/// A parsed body. Containers hold ranges of `items` (array elements) or
/// `members` (object members), filled as each container closes, so that
/// every container's children sit side by side.
pub(super) struct Document<'a> {
    root: Entry<'a>,
    items: Vec<Entry<'a>>,
    members: Vec<(Cow<'a, str>, Entry<'a>)>,
}

enum Entry<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array { start: u32, len: u32 },
    Object { start: u32, len: u32 },
}

/// Read `raw` as a document, or `None` where the `Value` path must decide:
/// a parse error, a repeated key, an object wider than [`MAX_MEMBERS`], or
/// a number literal other parsers might read as another value.
pub(super) fn parse(raw: &[u8]) -> Option<Document<'_>> {
    let notes = Notes::default();
    let mut builder = Builder {
        notes: &notes,
        // A first guess, one entry per 16 bytes of body; they grow past it.
        items: Vec::with_capacity(raw.len() / 16),
        members: Vec::with_capacity(raw.len() / 16),
        open_items: Vec::new(),
        open_members: Vec::new(),
    };
    // One UTF-8 check of the whole body rather than one per string (what
    // `from_slice` does): the same texts are refused, since bytes outside
    // strings must be ASCII JSON anyway.
    let text = std::str::from_utf8(raw).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let root = EntrySeed(&mut builder).deserialize(&mut de).ok()?;
    de.end().ok()?;
    if !notes.numbers_exact(raw) {
        return None;
    }
    Some(Document {
        root,
        items: builder.items,
        members: builder.members,
    })
}

impl Document<'_> {
    pub(super) fn root(&self) -> BorrowedNode<'_> {
        BorrowedNode {
            doc: self,
            entry: &self.root,
        }
    }
}

struct Builder<'a, 'n> {
    notes: &'n Notes,
    items: Vec<Entry<'a>>,
    members: Vec<(Cow<'a, str>, Entry<'a>)>,
    /// Children of the containers still open, innermost last.
    open_items: Vec<Entry<'a>>,
    open_members: Vec<(Cow<'a, str>, Entry<'a>)>,
}

/// Why parsing stopped early; never shown, the `Value` path reports.
fn give_up<E: de::Error>() -> E {
    E::custom("left to the Value path")
}

fn range<E: de::Error>(start: usize, len: usize) -> Result<(u32, u32), E> {
    match (u32::try_from(start), u32::try_from(len)) {
        (Ok(start), Ok(len)) => Ok((start, len)),
        _ => Err(give_up()),
    }
}

struct EntrySeed<'b, 'a, 'n>(&'b mut Builder<'a, 'n>);

impl<'de> DeserializeSeed<'de> for EntrySeed<'_, 'de, '_> {
    type Value = Entry<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Entry<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_, 'de, '_> {
    type Value = Entry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Entry<'de>, E> {
        Ok(Entry::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Entry<'de>, E> {
        self.0.notes.number();
        Ok(Entry::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Entry<'de>, E> {
        self.0.notes.number();
        Ok(Entry::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Entry<'de>, E> {
        self.0.notes.float();
        // serde_json hands over only finite numbers.
        Number::from_f64(v).map(Entry::Number).ok_or_else(give_up)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Entry<'de>, E> {
        Ok(Entry::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Entry<'de>, E> {
        Ok(Entry::String(Cow::Owned(v.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<Entry<'de>, E> {
        Ok(Entry::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry<'de>, A::Error> {
        let builder = self.0;
        let mark = builder.open_items.len();
        while let Some(item) = seq.next_element_seed(EntrySeed(&mut *builder))? {
            builder.open_items.push(item);
        }
        let (start, len) = range(builder.items.len(), builder.open_items.len() - mark)?;
        builder.items.extend(builder.open_items.drain(mark..));
        Ok(Entry::Array { start, len })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry<'de>, A::Error> {
        let builder = self.0;
        let mark = builder.open_members.len();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let open = &builder.open_members[mark..];
            if open.len() == MAX_MEMBERS || open.iter().any(|(name, _)| *name == key) {
                return Err(give_up());
            }
            let value = map.next_value_seed(EntrySeed(&mut *builder))?;
            builder.open_members.push((key, value));
        }
        let (start, len) = range(builder.members.len(), builder.open_members.len() - mark)?;
        builder.members.extend(builder.open_members.drain(mark..));
        Ok(Entry::Object { start, len })
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

// --- jsonschema's view of a document ------------------------------------------

/// One value of a document: cheap to copy, as jsonschema asks.
#[derive(Clone, Copy)]
pub(super) struct BorrowedNode<'a> {
    doc: &'a Document<'a>,
    entry: &'a Entry<'a>,
}

impl Json for Borrowed {
    type Node<'a> = BorrowedNode<'a>;
    type PreparedKey = String;
    type StringBuffer = Option<Document<'static>>;

    /// Objects are short vectors (at most [`MAX_MEMBERS`]): scanning them
    /// beats a lookup per schema property, as for serde_json's ordered map.
    const KEYS_PER_LOOKUP: usize = 2;
    /// A document is a tree.
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(
        buffer: &mut Option<Document<'static>>,
        string: &str,
        f: impl FnOnce(BorrowedNode<'_>) -> T,
    ) -> T {
        let doc = buffer.insert(Document {
            root: Entry::String(Cow::Owned(string.to_owned())),
            items: Vec::new(),
            members: Vec::new(),
        });
        f(doc.root())
    }
}

impl<'a> BorrowedNode<'a> {
    fn as_str(&self) -> Option<&'a str> {
        match self.entry {
            Entry::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> Node<'a, Borrowed> for BorrowedNode<'a> {
    type Object = BorrowedObject<'a>;
    type Array = BorrowedArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<BorrowedObject<'a>> {
        match *self.entry {
            Entry::Object { start, len } => Some(BorrowedObject {
                doc: self.doc,
                members: &self.doc.members[start as usize..][..len as usize],
            }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<BorrowedArray<'a>> {
        match *self.entry {
            Entry::Array { start, len } => Some(BorrowedArray {
                doc: self.doc,
                items: &self.doc.items[start as usize..][..len as usize],
            }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        self.as_str().map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.entry {
            Entry::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.entry {
            Entry::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.entry, Entry::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.entry {
            Entry::Null => JsonType::Null,
            Entry::Bool(_) => JsonType::Boolean,
            Entry::Number(_) => JsonType::Number,
            Entry::String(_) => JsonType::String,
            Entry::Array { .. } => JsonType::Array,
            Entry::Object { .. } => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let string = self.as_str()?;
        // A code point takes one to four bytes: the byte count often
        // settles it without counting.
        let bytes = string.len() as u64;
        let fewest = bytes.div_ceil(4);
        if bytes < min || fewest > max {
            return Some(false);
        }
        if min <= fewest && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(string.chars().count() as u64)))
    }

    /// `const` and `enum`: scalars compare without building a `Value`
    /// string; containers take the general way.
    fn equals_value(&self, expected: &Value) -> bool {
        match (self.entry, expected) {
            (Entry::String(s), Value::String(e)) => s == e,
            (Entry::String(_), _) => false,
            (Entry::Number(n), Value::Number(_)) => {
                jsonschema::json::cmp::equal(&Value::Number(n.clone()), expected)
            }
            _ => jsonschema::json::cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(match self.entry {
            Entry::Null => Value::Null,
            Entry::Bool(b) => Value::Bool(*b),
            Entry::Number(n) => Value::Number(n.clone()),
            Entry::String(s) => Value::String(s.to_string()),
            Entry::Array { .. } => Value::Array(
                self.as_array()
                    .into_iter()
                    .flat_map(|a| a.elements())
                    .map(|item| item.to_value().into_owned())
                    .collect(),
            ),
            Entry::Object { .. } => {
                let mut object = Map::new();
                for (name, value) in self.as_object().into_iter().flat_map(|o| o.members()) {
                    object.insert(name.to_owned(), value.to_value().into_owned());
                }
                Value::Object(object)
            }
        })
    }

    /// Entries never move once the document is built, and each lives in
    /// exactly one place (the root, an element or a member).
    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(std::ptr::from_ref(self.entry) as usize))
    }
}

#[derive(Clone, Copy)]
pub(super) struct BorrowedObject<'a> {
    doc: &'a Document<'a>,
    members: &'a [(Cow<'a, str>, Entry<'a>)],
}

impl<'a> Object<'a, Borrowed> for BorrowedObject<'a> {
    type Node = BorrowedNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.members.len()
    }

    fn get(&self, key: &String) -> Option<BorrowedNode<'a>> {
        self.members
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, entry)| BorrowedNode {
                doc: self.doc,
                entry,
            })
    }

    fn members(&self) -> Members<'a> {
        Members {
            doc: self.doc,
            iter: self.members.iter(),
        }
    }
}

pub(super) struct Members<'a> {
    doc: &'a Document<'a>,
    iter: std::slice::Iter<'a, (Cow<'a, str>, Entry<'a>)>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, BorrowedNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, entry) = self.iter.next()?;
        Some((
            name,
            BorrowedNode {
                doc: self.doc,
                entry,
            },
        ))
    }
}

#[derive(Clone, Copy)]
pub(super) struct BorrowedArray<'a> {
    doc: &'a Document<'a>,
    items: &'a [Entry<'a>],
}

impl<'a> Array<'a, Borrowed> for BorrowedArray<'a> {
    type Node = BorrowedNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.items.len()
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            doc: self.doc,
            iter: self.items.iter(),
        }
    }
}

pub(super) struct Elements<'a> {
    doc: &'a Document<'a>,
    iter: std::slice::Iter<'a, Entry<'a>>,
}

impl<'a> Iterator for Elements<'a> {
    type Item = BorrowedNode<'a>;

    fn next(&mut self) -> Option<BorrowedNode<'a>> {
        let entry = self.iter.next()?;
        Some(BorrowedNode {
            doc: self.doc,
            entry,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonschema::Validator;
    use serde_json::json;

    use super::*;

    fn both(schema: &Value) -> (Validator<Borrowed>, Validator) {
        let borrowed = jsonschema::options_for::<Borrowed>().build(schema).unwrap();
        (borrowed, jsonschema::validator_for(schema).unwrap())
    }

    #[test]
    fn meets_jsonschemas_representation_contract() {
        let text = jsonschema::json::conformance::document().to_string();
        let doc = parse(text.as_bytes()).expect("a plain document is read");
        jsonschema::json::conformance::assert_conformance::<Borrowed>(&doc.root());
    }

    #[test]
    fn converts_back_to_the_value_serde_json_reads() {
        let text = r#"{"a":[1,-2,3.5,"x\"y",{"b":null,"c":[]}],"d":{},"e":true,"\u00e9":"\u00e9"}"#;
        let doc = parse(text.as_bytes()).unwrap();
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(doc.root().to_value().into_owned(), expected);
    }

    /// The same verdict as the `Value` validator, instance by instance.
    #[test]
    fn agrees_with_the_value_validator() {
        let schema = json!({
            "type": "object",
            "required": ["id", "items"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "pattern": "^ord-[0-9]{4}$"},
                "name": {"type": "string", "minLength": 2, "maxLength": 3},
                "kind": {"enum": ["a", 1, {"x": [1]}]},
                "fixed": {"const": 2.0},
                "count": {"type": "integer", "minimum": 1, "exclusiveMaximum": 10},
                "tags": {"type": "array", "uniqueItems": true, "items": {"type": "string"}},
                "items": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["qty"],
                    "properties": {"qty": {"type": "number", "multipleOf": 0.5}}
                }},
                "meta": {"type": "object", "propertyNames": {"maxLength": 3},
                         "patternProperties": {"^x-": {"type": "boolean"}}},
                "either": {"oneOf": [{"type": "null"}, {"type": "string", "format": "email"}]}
            }
        });
        let (borrowed, value) = both(&schema);
        let instances = [
            r#"{"id":"ord-0001","items":[{"qty":1}]}"#,
            r#"{"id":"ord-001","items":[{"qty":1}]}"#,
            r#"{"id":"ord-0001","items":[]}"#,
            r#"{"id":"ord-0001"}"#,
            r#"{"id":"ord-0001","items":[{"qty":1.25}]}"#,
            r#"{"id":"ord-0001","items":[{"qty":2.5}],"name":"éé"}"#,
            r#"{"id":"ord-0001","items":[{"qty":2.5}],"name":"ééüü"}"#,
            r#"{"id":"ord-0001","items":[{"qty":2.5}],"name":"\u00e9\u00e9"}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"kind":"a"}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"kind":1.0}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"kind":{"x":[1]}}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"kind":{"x":[2]}}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"kind":"b"}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"fixed":2}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"fixed":3}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"count":9.0}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"count":10}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"count":0.5}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"tags":["a","b"]}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"tags":["a","a"]}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"tags":["a",1]}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"meta":{"x-a":true,"b":1}}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"meta":{"x-a":1}}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"meta":{"long":1}}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"either":null}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"either":"a@example.com"}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"either":"not an address"}"#,
            r#"{"id":"ord-0001","items":[{"qty":1}],"other":1}"#,
            r#"[1,2]"#,
            r#""ord-0001""#,
        ];
        for text in instances {
            let doc = parse(text.as_bytes()).expect(text);
            let expected = value.is_valid(&serde_json::from_str(text).unwrap());
            assert_eq!(borrowed.is_valid(doc.root()), expected, "{text}");
        }
    }

    #[test]
    fn leaves_to_the_value_path_what_it_cannot_vouch_for() {
        let wide: String = format!(
            "{{{}}}",
            (0..=MAX_MEMBERS)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"{"n":1.00000000000000000001}"#,
            r#"{"n":1e-400}"#,
            r#"{"a":1} x"#,
            r#"{"a":"#,
            "\u{feff}{}",
            wide.as_str(),
        ] {
            assert!(parse(text.as_bytes()).is_none(), "{text}");
        }
        let narrow = &wide[..wide.rfind(",\"k").unwrap()];
        assert!(parse(format!("{narrow}}}").as_bytes()).is_some());
        // Exact numbers, escapes and deep nesting within serde_json's limit
        // stay on the fast path.
        for text in [
            r#"{"n":1.5,"m":-3,"s":"\n\u00e9"}"#,
            &format!("{}{}", "[".repeat(100), "]".repeat(100)),
        ] {
            assert!(parse(text.as_bytes()).is_some(), "{text}");
        }
    }

    #[test]
    fn property_names_are_validated_through_string_nodes() {
        let (borrowed, _) = both(&json!({"propertyNames": {"pattern": "^[a-z]+$"}}));
        assert!(borrowed.is_valid(parse(br#"{"ab":1}"#).unwrap().root()));
        assert!(!borrowed.is_valid(parse(br#"{"Ab":1}"#).unwrap().root()));
    }
}
