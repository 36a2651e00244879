//! The `source` setting: one export URL, or a list of them — the ADMIN replicas the gateway
//! fails over between (see [`super::replicas`]). A config file writes one URL as a string (as
//! before replicas existed) or several as a list; the daemon prints it back the same way.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The export URLs, in the order they are tried. Never empty once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources(pub Vec<String>);

impl From<String> for Sources {
    fn from(url: String) -> Self {
        Sources(vec![url])
    }
}

impl From<&str> for Sources {
    fn from(url: &str) -> Self {
        Sources(vec![url.to_owned()])
    }
}

impl Sources {
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// What each URL must be, or `None` when all are usable: http(s):// or file://, at least
    /// one, none twice (a duplicate would only make a down replica be tried twice a round).
    pub fn invalid(&self) -> Option<String> {
        if self.0.is_empty() {
            return Some("at least one http(s):// or file:// URL".into());
        }
        for (i, url) in self.0.iter().enumerate() {
            if !(url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with("file://"))
            {
                return Some(format!("an http(s):// or file:// URL, found {url:?}"));
            }
            if self.0[..i].contains(url) {
                return Some(format!("each URL once, found {url:?} twice"));
            }
        }
        None
    }
}

impl Serialize for Sources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sources, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Sources;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL or a list of URLs (ADMIN replicas)")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Sources, E> {
                Ok(Sources::from(url))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sources, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(Sources(urls))
            }
        }
        d.deserialize_any(OneOrMany)
    }
}
