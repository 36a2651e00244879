//! Apply: the only part of the gateway that changes the kernel. Everything here sits behind
//! narrow traits with an in-memory twin, so the sync logic is unit-tested against the same
//! transactions the kernel gets.
//!
//! - [`Firewall`]: apply / check a transaction on our table, read the table back;
//!   [`NftCli`] drives the real `nft`, [`TwinFirewall`] applies to a [`TableState`];
//! - [`Conntrack`]: forget connections to removed real servers;
//! - [`ipvs`]: the IPVS services portcullis owns, over netlink;
//! - [`Syncer`]: full regeneration at start and on drift, incremental syncs otherwise, and
//!   the [`Guard`] against exports that withdraw too much at once — each sync planned
//!   first (IPVS before, the nft transaction, IPVS after), then executed;
//! - [`flush_owned`]: remove what portcullis put in the kernel, nothing else;
//! - [`rcu`]: expedited grace periods, without which every nft change waits one out;
//! - [`kick`]: after a promotion, make the synchronised connections' endpoints retransmit
//!   at once (RFC 6069) instead of at the end of their backoff.

pub mod bpf;
pub mod checksum;
mod conntrack;
mod error;
mod flush;
mod guard;
pub mod ipvs;
pub mod kick;
mod nft_cli;
pub mod rcu;
mod readback;
pub mod stamp;
mod sync;
mod table;
mod twin;

/// For the fuzz targets only (fuzz/): the conntrack decoder lives in a private module.
#[doc(hidden)]
pub use conntrack::message::decode_reply as fuzz_decode_conntrack_reply;
pub use conntrack::{
    Conntrack, ConntrackError, ConntrackFlush, ConntrackNetlink, Endpoints, Flow, NoConntrack,
    RecordingConntrack,
};
pub use error::{parse_diagnostics, NftDiagnostic, NftError};
pub use flush::{flush, flush_owned, FlushError, FlushFailure, FlushReport};
pub use guard::{Guard, GuardRefusal};
pub use nft_cli::NftCli;
pub use readback::parse_table;
pub use sync::{removed_reals, SyncError, SyncOutcome, Syncer};
pub use table::{drift, ChainState, SetState, TableRefusal, TableState, TransactionRefused};
pub use twin::TwinFirewall;

use crate::render::nft::Transaction;

/// The kernel's nftables, as far as our one table is concerned.
pub trait Firewall {
    /// Applies the transaction as one atomic batch.
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError>;
    /// Checks the transaction against the current table without changing anything.
    fn check(&mut self, tx: &Transaction) -> Result<(), NftError>;
    /// Our table as it is now; `None` when it does not exist.
    fn read_table(&mut self) -> Result<Option<TableState>, NftError>;
    /// Deletes our table — everything portcullis put in nftables, nothing else. `false` when
    /// there was none.
    fn delete_table(&mut self) -> Result<bool, NftError>;
    /// Whether our table has a chain of this name. Lists the whole table unless the
    /// implementation can ask for the one chain (as `nft list chain` does).
    fn has_chain(&mut self, name: &str) -> Result<bool, NftError> {
        Ok(self
            .read_table()?
            .is_some_and(|t| t.chains.contains_key(name)))
    }
}
