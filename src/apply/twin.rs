//! The in-memory twin of [`super::NftCli`]: applies the very same transactions to a
//! [`TableState`] with the kernel's rules, so unit tests assert on the resulting table.

use super::error::NftError;
use super::table::TableState;
use super::Firewall;
use crate::render::nft::Transaction;

#[derive(Clone, Debug, Default)]
pub struct TwinFirewall {
    pub table: Option<TableState>,
    /// Every transaction applied, in order (tests check what was sent).
    pub applied: Vec<Transaction>,
    /// When set, the next apply fails with this reason and changes nothing.
    pub fail_next: Option<String>,
    /// Whole-table listings served (`nft list table`: seconds at 100k services).
    pub dumps: usize,
}

impl Firewall for TwinFirewall {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        if let Some(reason) = self.fail_next.take() {
            return Err(NftError::Injected(reason));
        }
        self.table = TableState::apply(&self.table, tx)?;
        self.applied.push(tx.clone());
        Ok(())
    }
    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        TableState::apply(&self.table, tx)?;
        Ok(())
    }
    fn read_table(&mut self) -> Result<Option<TableState>, NftError> {
        self.dumps += 1;
        Ok(self.table.clone())
    }
    fn has_chain(&mut self, name: &str) -> Result<bool, NftError> {
        Ok(self
            .table
            .as_ref()
            .is_some_and(|t| t.chains.contains_key(name)))
    }
    fn delete_table(&mut self) -> Result<bool, NftError> {
        Ok(self.table.take().is_some())
    }
}
