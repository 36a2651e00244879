//! Inventory changes through the server: one [`Edit`] at a time under the catalog's write
//! lock — read the files fresh, check `If-Match` against their revision, apply the edit, run
//! the whole catalog through the same checks as `portcullis-admin check`, append the audit
//! entry, replace `inventory.yaml` atomically, serve the result. A refused change writes
//! nothing.

use super::audit::{self, AuditEntry};
use super::state::{revision, AdminState, MutationError, Snapshot};
use crate::catalog::{Catalog, Sources, INVENTORY_FILE};
use crate::edit::{self, Edit};
use serde::Serialize;
use std::path::PathBuf;

/// What a change did (the body of a mutation's response).
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub operation: &'static str,
    /// The instance id or server name (a moved instance: its new id).
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// False when the edit changed nothing (the instance already was in that state): nothing
    /// was written or audited.
    pub changed: bool,
    /// The catalog revision after the change.
    pub revision: String,
    /// The export's ETag after the change.
    pub etag: String,
}

/// Whether an `If-Match` header value admits `revision`: `*`, or one of its entity tags (quoted
/// or bare, `W/` ignored) equal to it.
pub(crate) fn if_match_admits(header: &str, revision: &str) -> bool {
    header.split(',').map(str::trim).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t.trim_matches('"') == revision
    })
}

impl AdminState {
    /// Where the audit log is appended.
    pub fn audit_path(&self) -> PathBuf {
        self.options()
            .audit_log
            .clone()
            .unwrap_or_else(|| self.dir().join("audit.jsonl"))
    }

    /// The audit log's last `limit` entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        #[cfg(feature = "db")]
        if self.shared().is_some() {
            return self.audit_tail_shared(limit).await;
        }
        let path = self.audit_path();
        tokio::task::spawn_blocking(move || audit::tail(&path, limit))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Applies `edit` (see the module comment). `if_match`: an `If-Match` header value; the
    /// change is refused with [`MutationError::Stale`] unless it admits the current revision.
    /// `identity` is what the audit log records as its author.
    pub async fn apply_edit(
        &self,
        edit: Edit,
        if_match: Option<String>,
        identity: &str,
    ) -> Result<Change, MutationError> {
        #[cfg(feature = "db")]
        if self.shared().is_some() {
            return self
                .apply_edit_shared(&edit, if_match.as_deref(), identity)
                .await;
        }
        let this = self.clone();
        let identity = identity.to_owned();
        tokio::task::spawn_blocking(move || {
            this.apply_edit_blocking(&edit, if_match.as_deref(), &identity)
        })
        .await
        .map_err(|e| MutationError::Io {
            path: INVENTORY_FILE.into(),
            source: std::io::Error::other(e),
        })?
    }

    fn apply_edit_blocking(
        &self,
        edit: &Edit,
        if_match: Option<&str>,
        identity: &str,
    ) -> Result<Change, MutationError> {
        let _files = self.lock_files();
        let dir = self.dir().to_owned();
        let sources = Sources::read(&dir).map_err(MutationError::InvalidCatalog)?;
        match plan(sources, edit, if_match, identity, &self.snapshot())? {
            Plan::Unchanged {
                catalog,
                applied,
                revision,
            } => {
                // Nothing to write; make sure what is served is what is on disk.
                let snap = match catalog {
                    None => self.snapshot(),
                    Some(catalog) => self
                        .publish_written(catalog, revision.clone())
                        .map_err(MutationError::InvalidCatalog)?,
                };
                Ok(Change::new(
                    edit,
                    applied,
                    false,
                    revision,
                    snap.etag.clone(),
                ))
            }
            Plan::Changed {
                sources,
                catalog,
                applied,
                mut entry,
            } => {
                let audit_path = self.audit_path();
                audit::append(&audit_path, &entry).map_err(|source| MutationError::Audit {
                    path: audit_path.display().to_string(),
                    source,
                })?;
                let path = dir.join(INVENTORY_FILE);
                if let Err(source) =
                    crate::durable::write_atomically(&path, sources.inventory.as_bytes())
                {
                    entry.failed = Some(source.to_string());
                    if let Err(e) = audit::append(&audit_path, &entry) {
                        tracing::error!(%e, "could not record the failed change in the audit log");
                    }
                    return Err(MutationError::Io {
                        path: path.display().to_string(),
                        source,
                    });
                }
                log_change(&entry);
                let revision = entry.revision_after;
                let snap = self
                    .publish_written(*catalog, revision.clone())
                    .map_err(MutationError::InvalidCatalog)?;
                Ok(Change::new(
                    edit,
                    applied,
                    true,
                    revision,
                    snap.etag.clone(),
                ))
            }
        }
    }
}

impl Change {
    pub(super) fn new(
        edit: &Edit,
        applied: edit::Applied,
        changed: bool,
        revision: String,
        etag: String,
    ) -> Change {
        Change {
            operation: edit.operation(),
            target: applied.target,
            before: applied.before,
            after: applied.after,
            changed,
            revision,
            etag,
        }
    }
}

pub(super) fn log_change(entry: &AuditEntry) {
    tracing::info!(
        operation = %entry.operation,
        target = %entry.target,
        identity = %entry.identity,
        revision = %entry.revision_after,
        "inventory changed"
    );
}

/// What an edit of a catalog's files comes to, decided without any I/O — the same for the
/// directory catalog and the one in PostgreSQL.
pub(super) enum Plan {
    /// The edit changes nothing: nothing to write or audit. `catalog`: the files' catalog
    /// when it is not the one served already.
    Unchanged {
        catalog: Option<Catalog>,
        applied: edit::Applied,
        revision: String,
    },
    /// Write `sources` (only the inventory differs), after appending `entry`.
    Changed {
        sources: Sources,
        // Boxed: a catalog is large and `Unchanged` mostly carries none.
        catalog: Box<Catalog>,
        applied: edit::Applied,
        entry: AuditEntry,
    },
}

/// Checks `if_match` against the revision of `sources`, applies `edit`, and runs the result
/// through the whole catalog's checks. `served`: the snapshot being served, whose catalog is
/// used instead of validating `sources` again when it is theirs (the common case).
pub(super) fn plan(
    sources: Sources,
    edit: &Edit,
    if_match: Option<&str>,
    identity: &str,
    served: &Snapshot,
) -> Result<Plan, MutationError> {
    let revision_before = revision(&sources);
    if let Some(expected) = if_match {
        if !if_match_admits(expected, &revision_before) {
            return Err(MutationError::Stale {
                expected: expected.to_owned(),
                current: revision_before,
            });
        }
    }
    let fresh = if served.revision == revision_before {
        None
    } else {
        Some(Catalog::from_sources(&sources).map_err(MutationError::InvalidCatalog)?)
    };
    let catalog: &Catalog = fresh.as_ref().unwrap_or(&served.catalog);
    let applied = edit::apply(catalog, edit)?;
    if applied.before.is_some() && applied.before == applied.after {
        return Ok(Plan::Unchanged {
            catalog: fresh,
            applied,
            revision: revision_before,
        });
    }
    let text = edit::text::render(
        &sources.inventory,
        &catalog.inventory,
        edit,
        &applied.inventory,
    );
    let new_sources = Sources {
        inventory: text,
        metas: sources.metas,
    };
    let new_catalog = Catalog::from_sources(&new_sources).map_err(MutationError::Rejected)?;
    let entry = AuditEntry {
        time: audit::now(),
        identity: identity.to_owned(),
        operation: edit.operation().to_owned(),
        target: applied.target.clone(),
        before: applied.before.clone(),
        after: applied.after.clone(),
        revision_before,
        revision_after: revision(&new_sources),
        failed: None,
    };
    Ok(Plan::Changed {
        sources: new_sources,
        catalog: Box::new(new_catalog),
        applied,
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::if_match_admits;

    #[test]
    fn if_match_forms() {
        assert!(if_match_admits("abc", "abc"));
        assert!(if_match_admits("\"abc\"", "abc"));
        assert!(if_match_admits("W/\"abc\"", "abc"));
        assert!(if_match_admits("\"x\", \"abc\"", "abc"));
        assert!(if_match_admits("*", "abc"));
        assert!(!if_match_admits("\"abd\"", "abc"));
        assert!(!if_match_admits("", "abc"));
    }
}
