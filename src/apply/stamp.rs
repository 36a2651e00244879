//! The table's stamp: an empty regular chain named `applied_<digest>`, written in the same
//! transaction as the change by `apply --once`, where the digest covers the export's bytes,
//! the render options and this build's version. A later `apply --once` that finds the stamp
//! of the export it cached (`nft list chain`, one small object, not the whole table) knows the
//! table is what that export rendered, and sends only the difference — instead of listing a
//! table of 100k services (seconds and hundreds of MiB) and rebuilding it.
//!
//! Whoever changes the table without knowing the digest removes the stamp (the daemon's
//! increments, which carry no export bytes) or regenerates the table whole (which drops it):
//! a stamp is only ever found on a table that is exactly what its digest names. Hand edits
//! are the one thing it cannot see; `apply --once --read-back` (and the daemon's audit) read
//! the table whole and repair them.

use crate::render::nft::RenderOptions;

/// Every stamp chain's name starts with this; `drift` does not count them.
pub const PREFIX: &str = "applied_";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp(String);

impl Stamp {
    /// The stamp of `export` rendered with `opts` by this build.
    pub fn of(export: &[u8], opts: &RenderOptions) -> Stamp {
        let mut bytes =
            format!("portcullis {}\n{opts:?}\n", env!("CARGO_PKG_VERSION")).into_bytes();
        bytes.extend_from_slice(export);
        let digest = crate::durable::sha256_hex(&bytes);
        // 128 bits name a table apart from any other: the chain name stays short.
        Stamp(format!("{PREFIX}{}", &digest[..32]))
    }

    pub fn chain(&self) -> &str {
        &self.0
    }

    /// A stamp chain found in a listed table.
    pub fn from_chain(name: &str) -> Option<Stamp> {
        name.starts_with(PREFIX).then(|| Stamp(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_follows_the_bytes_and_the_options() {
        let opts = RenderOptions::default();
        let a = Stamp::of(b"x", &opts);
        assert_eq!(a, Stamp::of(b"x", &opts));
        assert_ne!(a, Stamp::of(b"y", &opts));
        let other = RenderOptions {
            backend: crate::render::nft::Backend::Ipvs,
            ..RenderOptions::default()
        };
        assert_ne!(a, Stamp::of(b"x", &other));
        assert!(a.chain().starts_with(PREFIX) && a.chain().len() == PREFIX.len() + 32);
    }
}
