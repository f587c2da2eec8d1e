//! Request fields that are lists, read with their limits applied while parsing.
//!
//! serde's untagged enums buffer a whole value before trying each variant (a 2 MiB body of
//! `[[0],[0],…]` became ~500 000 buffered vectors, tens of MB), and `flatten` buffers every field
//! it does not know. These visitors look at the next JSON token instead, and stop at the first
//! element past a limit, so what a request allocates is bounded by its limits, not by how its
//! 2 MiB are shaped. A limit met is an error whose text carries [`LIMIT`]: the handlers answer it
//! with 413 naming the limit.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Most inputs (texts or id lists) in one request: the pool's own limit, applied while parsing.
pub const MAX_INPUTS: usize = crate::pool::MAX_TEXTS_PER_REQUEST;
/// Most token ids in one input (the longest context any served model has).
pub const MAX_IDS: usize = 8192;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 1024;
/// Most content parts in one message.
pub const MAX_PARTS: usize = 256;
/// Most stop strings in one request (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// Marks a parse error as a limit met (answered 413, not 400).
pub const LIMIT: &str = "(request limit)";

fn over<E: de::Error>(what: &str, limit: usize) -> E {
    E::custom(format!("more than {limit} {what} in one request {LIMIT}"))
}

/// A list of at most `N` elements, refused at element `N + 1` without reading further.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounded<T, const N: usize>(pub Vec<T>);

impl<'de, T: de::Deserialize<'de>, const N: usize> de::Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: de::Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {N} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                collect(seq, N, "elements").map(Bounded)
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

/// The elements of `seq`, refusing the `limit + 1`th. The size hint is not trusted.
fn collect<'de, T: de::Deserialize<'de>, A: SeqAccess<'de>>(
    mut seq: A,
    limit: usize,
    what: &str,
) -> Result<Vec<T>, A::Error> {
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(limit).min(64));
    while let Some(x) = seq.next_element()? {
        if out.len() == limit {
            return Err(over(what, limit));
        }
        out.push(x);
    }
    Ok(out)
}

/// `input` of `/v1/embeddings` and `prompt` of `/v1/completions`: a string, a list of strings, a
/// list of token ids, or a list of such lists.
#[derive(Debug, Clone, PartialEq)]
pub enum TextsOrIds {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// One element of a list: its first element decides what the list is.
enum Item {
    Text(String),
    Id(u32),
    Ids(Vec<u32>),
}

impl<'de> de::Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a token id or a list of token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Item, E> {
                Ok(Item::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Item, E> {
                u32::try_from(v).map(Item::Id).map_err(|_| E::custom(format!("token id {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Item, E> {
                Err(E::custom(format!("token id {v} is out of range")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                collect(seq, MAX_IDS, "token ids in an input").map(Item::Ids)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for TextsOrIds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextsOrIds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a list of strings, a list of token ids or a list of token id lists")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextsOrIds, E> {
                Ok(TextsOrIds::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TextsOrIds, E> {
                Ok(TextsOrIds::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextsOrIds, A::Error> {
                let mismatch = || de::Error::custom("a list mixes strings, token ids and lists: use one kind");
                let mut out = match seq.next_element::<Item>()? {
                    None => TextsOrIds::Texts(vec![]),
                    Some(Item::Text(t)) => TextsOrIds::Texts(vec![t]),
                    Some(Item::Id(i)) => TextsOrIds::Ids(vec![i]),
                    Some(Item::Ids(v)) => TextsOrIds::IdLists(vec![v]),
                };
                while let Some(item) = seq.next_element::<Item>()? {
                    match (&mut out, item) {
                        (TextsOrIds::Texts(v), Item::Text(t)) if v.len() < MAX_INPUTS => v.push(t),
                        (TextsOrIds::IdLists(v), Item::Ids(ids)) if v.len() < MAX_INPUTS => v.push(ids),
                        (TextsOrIds::Ids(v), Item::Id(i)) if v.len() < MAX_IDS => v.push(i),
                        (TextsOrIds::Ids(_), Item::Id(_)) => return Err(over("token ids in an input", MAX_IDS)),
                        (TextsOrIds::Texts(_), Item::Text(_)) | (TextsOrIds::IdLists(_), Item::Ids(_)) => {
                            return Err(over("inputs", MAX_INPUTS));
                        }
                        _ => return Err(mismatch()),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// `stop`: one string or a list of at most [`MAX_STOPS`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stops(pub Vec<String>);

impl<'de> de::Deserialize<'de> for Stops {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stops;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a string or a list of at most {MAX_STOPS} strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Stops, E> {
                Ok(Stops(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Stops, A::Error> {
                collect(seq, MAX_STOPS, "stop strings").map(Stops)
            }
        }
        d.deserialize_any(V)
    }
}

/// A chat message's `content`: a string, or a list of parts.
#[derive(Debug)]
pub enum Content<P> {
    Text(String),
    Parts(Vec<P>),
}

impl<'de, P: de::Deserialize<'de>> de::Deserialize<'de> for Content<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<P>(PhantomData<P>);
        impl<'de, P: de::Deserialize<'de>> Visitor<'de> for V<P> {
            type Value = Content<P>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a string or a list of at most {MAX_PARTS} content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content<P>, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content<P>, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Content<P>, A::Error> {
                collect(seq, MAX_PARTS, "content parts in a message").map(Content::Parts)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Whether a JSON object has any entry, read without keeping any (for fields only accepted empty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnyEntries(pub bool);

impl<'de> de::Deserialize<'de> for AnyEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AnyEntries, A::Error> {
                let mut any = false;
                while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(AnyEntries(any))
            }
        }
        d.deserialize_map(V)
    }
}

/// For the OpenAPI document only: what [`TextsOrIds`] accepts (never parsed with this).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum TextsOrIdsDoc {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: de::DeserializeOwned>(s: &str) -> Result<T, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn each_shape_parses() {
        assert_eq!(parse::<TextsOrIds>(r#""a""#).unwrap(), TextsOrIds::Text("a".into()));
        assert_eq!(parse::<TextsOrIds>(r#"["a","b"]"#).unwrap(), TextsOrIds::Texts(vec!["a".into(), "b".into()]));
        assert_eq!(parse::<TextsOrIds>("[1,2]").unwrap(), TextsOrIds::Ids(vec![1, 2]));
        assert_eq!(parse::<TextsOrIds>("[[1],[2,3]]").unwrap(), TextsOrIds::IdLists(vec![vec![1], vec![2, 3]]));
        assert_eq!(parse::<TextsOrIds>("[]").unwrap(), TextsOrIds::Texts(vec![]));
        assert!(parse::<TextsOrIds>(r#"["a",1]"#).unwrap_err().contains("mixes"));
        assert!(parse::<TextsOrIds>("[-1]").unwrap_err().contains("out of range"));
        assert!(parse::<TextsOrIds>("[4294967296]").unwrap_err().contains("out of range"));
        assert_eq!(parse::<Stops>(r#""x""#).unwrap(), Stops(vec!["x".into()]));
    }

    #[test]
    fn limits_stop_the_parse_at_the_first_element_past_them() {
        let lists = format!("[{}]", vec!["[0]"; MAX_INPUTS + 1].join(","));
        let e = parse::<TextsOrIds>(&lists).unwrap_err();
        assert!(e.contains(LIMIT) && e.contains(&MAX_INPUTS.to_string()), "{e}");
        // It stopped right there, not at the end of the body.
        let col: usize = e.rsplit("column ").next().unwrap().parse().unwrap();
        assert!(col <= 4 * (MAX_INPUTS + 1) + 1, "stopped at column {col}");
        parse::<TextsOrIds>(&format!("[{}]", vec!["[0]"; MAX_INPUTS].join(","))).unwrap();
        let ids = format!("[{}]", vec!["0"; MAX_IDS + 1].join(","));
        assert!(parse::<TextsOrIds>(&ids).unwrap_err().contains(LIMIT));
        let inner = format!("[[{}]]", vec!["0"; MAX_IDS + 1].join(","));
        assert!(parse::<TextsOrIds>(&inner).unwrap_err().contains(LIMIT));
        assert!(parse::<Stops>(r#"["a","b","c","d","e"]"#).unwrap_err().contains(LIMIT));
        assert!(parse::<Bounded<u8, 2>>("[1,2,3]").unwrap_err().contains(LIMIT));
        assert_eq!(parse::<Bounded<u8, 2>>("[1,2]").unwrap(), Bounded(vec![1, 2]));
    }
}
