//! Human-readable diff: `+` added, `-` removed, `~` changed, one line per object, services at
//! the left margin and their parts indented beneath. Colour only when asked (a TTY).

use super::{ServiceChange, StateDiff};
use crate::model::{RealKey, RealServer, VirtualService};
use anstyle::{AnsiColor, Style as Ansi};
use std::fmt::Write;

/// Whether to colour the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    Color,
}

struct Painter {
    style: Style,
}

impl Painter {
    fn line(&self, out: &mut String, sign: char, indent: usize, text: &str) {
        let color = match sign {
            '+' => AnsiColor::Green,
            '-' => AnsiColor::Red,
            _ => AnsiColor::Yellow,
        };
        let pad = "    ".repeat(indent);
        match self.style {
            Style::Plain => {
                let _ = writeln!(out, "{pad}{sign} {text}");
            }
            Style::Color => {
                let s = Ansi::new().fg_color(Some(color.into()));
                let _ = writeln!(out, "{pad}{s}{sign} {text}{s:#}");
            }
        }
    }
}

fn real(key: &RealKey, rs: &RealServer) -> String {
    format!("real {key} weight {} ({})", rs.weight, rs.instance)
}

fn header(key: &crate::model::ServiceKey, svc: &VirtualService) -> String {
    match key {
        crate::model::ServiceKey::Fwmark { .. } => {
            format!("({} {}) [{}]", svc.service, svc.proto, svc.params)
        }
        crate::model::ServiceKey::Addr { .. } => format!("({}) [{}]", svc.service, svc.params),
    }
}

impl StateDiff {
    /// Renders the diff for a human; empty string when there is nothing to do.
    pub fn to_human(&self, style: Style) -> String {
        let p = Painter { style };
        let mut out = String::new();
        for change in &self.changes {
            match change {
                ServiceChange::Added { key, service } => whole(&p, &mut out, '+', key, service),
                ServiceChange::Removed { key, service } => whole(&p, &mut out, '-', key, service),
                ServiceChange::Replaced { key, old, new } => {
                    whole(&p, &mut out, '-', key, old);
                    whole(&p, &mut out, '+', key, new);
                }
                ServiceChange::Modified(u) => {
                    p.line(&mut out, '~', 0, &format!("service {}", u.key));
                    if let Some(c) = &u.service {
                        p.line(&mut out, '~', 1, &format!("type {} -> {}", c.old, c.new));
                    }
                    if let Some(c) = &u.params {
                        p.line(
                            &mut out,
                            '~',
                            1,
                            &format!("params [{}] -> [{}]", c.old, c.new),
                        );
                    }
                    for f in &u.frontends_removed {
                        p.line(&mut out, '-', 1, &format!("frontend {f}"));
                    }
                    for f in &u.frontends_added {
                        p.line(&mut out, '+', 1, &format!("frontend {f}"));
                    }
                    for r in &u.reals_removed {
                        p.line(&mut out, '-', 1, &real(&r.key, &r.server));
                    }
                    for r in &u.reals_added {
                        p.line(&mut out, '+', 1, &real(&r.key, &r.server));
                    }
                    for r in &u.reals_changed {
                        let mut text =
                            format!("real {} weight {} -> {}", r.key, r.old.weight, r.new.weight);
                        if r.old.instance != r.new.instance {
                            let _ = write!(
                                text,
                                " (instance {} -> {})",
                                r.old.instance, r.new.instance
                            );
                        } else {
                            let _ = write!(text, " ({})", r.new.instance);
                        }
                        p.line(&mut out, '~', 1, &text);
                    }
                }
            }
        }
        out
    }
}

fn whole(
    p: &Painter,
    out: &mut String,
    sign: char,
    key: &crate::model::ServiceKey,
    svc: &VirtualService,
) {
    p.line(out, sign, 0, &format!("service {key} {}", header(key, svc)));
    for f in &svc.frontends {
        p.line(out, sign, 1, &format!("frontend {f}"));
    }
    for (k, rs) in &svc.reals {
        p.line(out, sign, 1, &real(k, rs));
    }
}
