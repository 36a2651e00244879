//! A meta-configuration's `run` section: how an instance of the type runs on its host —
//! `run: { command: [...], env: {...}, stop-timeout: 10s }`. The strings keep their YAML nodes so
//! variables are substituted per instance (`config.rs`) with errors located in the meta file;
//! `${config}`, `${instance-dir}` and `${release}` are host paths the agent fills in.

use crate::read::{find, index, join, Reader};
use crate::yaml::{Kind, Node, Pos};
use indexmap::IndexMap;
use serde::Serialize;

/// When `stop-timeout` is not given: SIGTERM, then SIGKILL 10 s later.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// argv as written (variables not yet substituted).
    pub command: Vec<String>,
    pub env: IndexMap<String, String>,
    pub stop_timeout_ms: u64,
    /// The `command` items with their positions, for substitution with located errors.
    #[serde(skip)]
    pub command_nodes: Vec<Node>,
    #[serde(skip)]
    pub env_nodes: Vec<(String, Node)>,
    #[serde(skip)]
    pub pos: Pos,
}

/// A scalar as the text a command line gets (`port: 8080` is as good as `"8080"`).
fn scalar(r: &mut Reader, n: &Node, path: &str) -> Option<String> {
    match &n.kind {
        Kind::Str(s) => Some(s.clone()),
        Kind::Int(i) => Some(i.to_string()),
        Kind::Bool(b) => Some(b.to_string()),
        _ => {
            r.bad(n, path, "a string or number");
            None
        }
    }
}

pub(super) fn read_run(r: &mut Reader, node: &Node) -> Option<Run> {
    let e = r.map(node, "run", &["command", "env", "stop-timeout"])?;
    let command_node = r.require(node, &e, "run", "command")?;
    let items = r.list(command_node, "run.command")?;
    if items.is_empty() {
        r.bad(
            command_node,
            "run.command",
            "a non-empty list (the program and its arguments)",
        );
        return None;
    }
    let mut command = Vec::new();
    let mut command_nodes = Vec::new();
    for (i, n) in items.iter().enumerate() {
        if let Some(s) = scalar(r, n, &index("run.command", i)) {
            command.push(s);
            command_nodes.push(n.clone());
        }
    }
    let mut env = IndexMap::new();
    let mut env_nodes = Vec::new();
    if let Some(n) = find(&e, "env") {
        for (k, v) in r.map(n, "run.env", &[]).unwrap_or_default() {
            if let Some(s) = scalar(r, v, &join("run.env", &k.name)) {
                env.insert(k.name.clone(), s);
                env_nodes.push((k.name.clone(), v.clone()));
            }
        }
    }
    let stop_timeout_ms = match find(&e, "stop-timeout") {
        None => DEFAULT_STOP_TIMEOUT_MS,
        Some(n) => match &n.kind {
            Kind::Int(s) if (0..=3600).contains(s) => *s as u64 * 1000,
            Kind::Str(s) => match humantime::parse_duration(s) {
                Ok(d) if d.as_secs() <= 3600 => d.as_millis() as u64,
                _ => {
                    r.bad(
                        n,
                        "run.stop-timeout",
                        "a duration up to 1h, e.g. 10s or 500ms",
                    );
                    return None;
                }
            },
            _ => {
                r.bad(
                    n,
                    "run.stop-timeout",
                    "a duration up to 1h, e.g. 10s or 500ms",
                );
                return None;
            }
        },
    };
    (command.len() == items.len()).then_some(Run {
        command,
        env,
        stop_timeout_ms,
        command_nodes,
        env_nodes,
        pos: node.pos,
    })
}
