//! nftables rendering: the full table, incremental transactions, and the static policy that
//! plugs into them. Produces typed transactions; turning them into kernel state is `apply`'s job.

mod full;
mod incremental;
pub mod layout;
mod policy;
pub mod transaction;

pub use full::full_ruleset;
pub use incremental::incremental;
pub use layout::Ifname;
pub use policy::{BasePolicy, PolicyError, DEFAULT_POLICY};
pub use transaction::Transaction;

/// What the table needs besides the desired state: host-specific settings from the config.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Interfaces facing clients. New inbound traffic arriving on them that is not an exported
    /// frontend, nor allowed by the base policy, is dropped. Empty: nothing is dropped.
    pub external_interfaces: Vec<Ifname>,
    pub policy: BasePolicy,
}
