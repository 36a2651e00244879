//! nftables rendering: the full table, incremental transactions, and the static policy that
//! plugs into them. Produces typed transactions; turning them into kernel state is `apply`'s job.

pub mod balance;
pub mod explain;
mod full;
mod incremental;
pub mod jhash;
pub mod layout;
pub mod maglev;
pub mod patterns;
mod policy;
pub mod transaction;

pub use full::full_ruleset;
pub use incremental::{incremental, incremental_between, Increment};
pub use layout::{Ifname, IfnameError, KICK_MARK, PROBE_PORTS};
pub use patterns::PatternIndex;
pub use policy::{BasePolicy, PolicyError, DEFAULT_POLICY};
pub use transaction::Transaction;

/// Which data plane balances the virtual services: the one spelling of the choice, for the
/// configuration file (`backend = "ipvs"`), the flags (`--backend ipvs`) and the renderer.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// IPVS does the balancing; the table marks fwmark frontends and filters.
    Ipvs,
    /// nftables does it all: DNAT chains per service (hosts without IPVS).
    #[default]
    Nft,
}

/// What the table needs besides the desired state: host-specific settings from the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    pub backend: Backend,
    /// Interfaces facing clients. New inbound traffic arriving on them that is not an exported
    /// frontend, nor allowed by the base policy, is dropped. Empty: nothing is dropped.
    pub external_interfaces: Vec<Ifname>,
    /// Interfaces facing the real servers. When given, traffic we translated (DNAT) may only
    /// be forwarded out through them, so a real-server address that routes elsewhere cannot
    /// turn the gateway into an open relay. Empty: any interface.
    pub internal_interfaces: Vec<Ifname>,
    pub policy: BasePolicy,
}
