//! The patch path: some services replaced, every other one left as applied, in time
//! proportional to the patch. For health transitions: at 100k rows, copying the applied
//! state, diffing it whole and dropping the old copy cost about 30 ms of the 25 ms a
//! transition may take (issue 17), for a change to one service.

use super::{SyncError, SyncOutcome, SyncPlan, Syncer};
use crate::apply::ipvs::Scope;
use crate::apply::{removed_reals, Conntrack, Firewall};
use crate::diff::StateDiff;
use crate::model::{DesiredState, ServiceKey, VirtualService};

impl<F: Firewall, C: Conntrack> Syncer<F, C> {
    /// Replaces the services `patch` names (an existing service each; a key nothing is
    /// applied under is ignored: a patch never adds nor removes a service, so the guard has
    /// nothing to check) and sends only their difference. Without an applied state nothing
    /// happens and `None` is returned: the caller syncs a whole state instead.
    ///
    /// The new state is built in place. If a step fails, the syncer forgets what is applied,
    /// so its next sync reads the kernel and repairs (as at start-up) — a failure is rare,
    /// and an undo of a half-sent change could not be proven right anyway.
    pub fn sync_services(
        &mut self,
        patch: Vec<(ServiceKey, VirtualService)>,
    ) -> Option<Result<SyncOutcome, SyncError>> {
        let mut state = self.applied.take()?;
        let (mut before, mut after) = (DesiredState::default(), DesiredState::default());
        for (key, service) in patch {
            let Some(slot) = state.services.get_mut(&key) else {
                continue;
            };
            if *slot == service {
                continue;
            }
            after.services.insert(key, service.clone());
            before
                .services
                .insert(key, std::mem::replace(slot, service));
        }
        let diff = StateDiff::between(&before, &after);
        if diff.is_empty() {
            self.applied = Some(state);
            return Some(Ok(SyncOutcome::Unchanged));
        }
        Some(
            self.plan_patch(state, &diff, &before, &after)
                .and_then(|plan| self.execute(plan)),
        )
    }

    fn plan_patch(
        &mut self,
        state: DesiredState,
        diff: &StateDiff,
        before: &DesiredState,
        after: &DesiredState,
    ) -> Result<SyncPlan, SyncError> {
        let ipvs = match self.ipvs.as_mut() {
            Some(ipvs) => {
                let keys: Vec<ServiceKey> = after.services.keys().copied().collect();
                Some(ipvs.plan(&state, Scope::Services(&keys))?)
            }
            None => None,
        };
        // The index is the whole applied state's: a pattern another service still uses stays.
        let (nft, patterns) = self.nft_step(diff, before, after, &state);
        Ok(SyncPlan {
            nft,
            patterns,
            conntrack: removed_reals(diff, before),
            ipvs,
            state,
        })
    }
}
