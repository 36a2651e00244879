//! The static base policy (`rules/base.nft`): operator-written chains that the generated table
//! plugs in, e.g. management access and ICMP. Parsed into typed chains and rules so it travels
//! in the same transaction as everything else.
//!
//! The accepted syntax is a strict subset of nft's: `chain base_NAME {` … `}` blocks, one rule
//! per line, `#` comment lines. A `;` is refused because in an nft script it would start a
//! second command — and a policy file must never be able to reach beyond our own table.

use super::transaction::{Chain, Rule};
use std::fmt;

/// Chains from the policy file and their rules, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BasePolicy {
    pub chains: Vec<(Chain, Vec<Rule>)>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for PolicyError {}

/// The policy shipped in the repository, compiled in so the binary works without the file.
pub const DEFAULT_POLICY: &str = include_str!("../../../rules/base.nft");

impl BasePolicy {
    pub fn parse(text: &str) -> Result<BasePolicy, PolicyError> {
        let mut policy = BasePolicy::default();
        let mut current: Option<(Chain, Vec<Rule>)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let fail = |message: String| Err(PolicyError { line, message });
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.contains(';') {
                return fail("expected one rule per line without `;`".into());
            }
            match current.as_mut() {
                None => {
                    let Some(name) = t.strip_prefix("chain ").and_then(|r| r.strip_suffix('{'))
                    else {
                        return fail(format!("expected `chain base_NAME {{`, found {t:?}"));
                    };
                    let name = name.trim();
                    if !valid_chain_name(name) {
                        return fail(format!(
                            "expected a chain name starting with `base_` made of a-z 0-9 _, found {name:?}"
                        ));
                    }
                    if policy.chains.iter().any(|(c, _)| c.name == name) {
                        return fail(format!("chain {name} is defined twice"));
                    }
                    current = Some((
                        Chain {
                            name: name.to_owned(),
                            hook: None,
                        },
                        Vec::new(),
                    ));
                }
                Some((chain, rules)) => {
                    if t == "}" {
                        policy.chains.extend(current.take());
                    } else if t.contains('{') && !t.contains('}') {
                        return fail(
                            "expected a rule on one line (braces must close on the same line)"
                                .into(),
                        );
                    } else {
                        rules.push(Rule {
                            chain: chain.name.clone(),
                            expr: t.to_owned(),
                        });
                    }
                }
            }
        }
        if let Some((chain, _)) = current {
            return Err(PolicyError {
                line: text.lines().count(),
                message: format!("chain {} is not closed with `}}`", chain.name),
            });
        }
        Ok(policy)
    }

    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|(c, _)| c.name == name)
    }
}

fn valid_chain_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with("base_")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_parses() {
        let p = BasePolicy::parse(DEFAULT_POLICY).expect("rules/base.nft is valid");
        assert!(p.has_chain("base_input"));
    }

    #[test]
    fn parses_chains_and_rules() {
        let p = BasePolicy::parse("# c\nchain base_input {\n  tcp dport 22 accept\n\n  # x\n}\n")
            .expect("valid");
        assert_eq!(p.chains.len(), 1);
        assert_eq!(p.chains[0].1[0].expr, "tcp dport 22 accept");
    }

    #[test]
    fn refuses_what_could_escape_the_table() {
        for (text, line) in [
            ("chain base_input {\n accept; flush ruleset\n}\n", 2),
            ("flush ruleset\n", 1),
            ("chain input {\n}\n", 1),
            ("chain base_x {\n accept\n", 2),
            ("chain base_x {\n}\nchain base_x {\n}\n", 3),
            ("chain base_x {\n ip saddr {\n}\n", 2),
        ] {
            let e = BasePolicy::parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
