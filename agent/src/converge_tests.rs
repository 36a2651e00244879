//! Converging against an in-memory twin of a supervisor that restarts on its own (as systemd
//! does): the agent adopts what runs, leaves restarting to the supervisor, takes over with its
//! backoff once the supervisor gave up, and removes what is no longer placed here. The real
//! systemd is exercised by `agent/tests/systemd.rs`.

use super::*;
use crate::process::ProcessId;
use crate::supervise::{Launch, Running, State, Status, Supervisor};
use portcullis_agent_proto::{Install, Release, RunSpec};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
struct World {
    states: BTreeMap<String, State>,
    calls: Vec<String>,
    next_pid: u32,
}

#[derive(Clone, Default)]
struct Twin(Rc<RefCell<World>>);

struct TwinUnit {
    id: String,
    world: Twin,
}

impl Running for TwinUnit {
    fn id(&self) -> ProcessId {
        let pid = match self.world.0.borrow().states.get(&self.id) {
            Some(State::Running { pid }) => *pid,
            _ => 0,
        };
        ProcessId { pid, start_time: 0 }
    }

    fn status(&mut self) -> Status {
        let w = self.world.0.borrow();
        Status {
            state: w.states.get(&self.id).cloned().unwrap_or(State::Exited {
                how: "never started".into(),
            }),
            restarts: 2,
            since: Some(42),
        }
    }
}

impl Twin {
    fn set(&self, id: &str, state: State) {
        self.0.borrow_mut().states.insert(id.into(), state);
    }

    fn calls(&self) -> Vec<String> {
        self.0.borrow().calls.clone()
    }
}

impl Supervisor for Twin {
    type Running = TwinUnit;

    fn adopt(&self, id: &str, _recorded: Option<ProcessId>) -> Option<TwinUnit> {
        match self.0.borrow().states.get(id) {
            Some(State::Running { .. } | State::Restarting { .. }) => Some(TwinUnit {
                id: id.into(),
                world: self.clone(),
            }),
            _ => None,
        }
    }

    fn start(&self, l: &Launch) -> Result<TwinUnit, AgentError> {
        let mut w = self.0.borrow_mut();
        w.next_pid += 1;
        let pid = 100 + w.next_pid;
        w.states.insert(l.id.clone(), State::Running { pid });
        w.calls.push(format!("start {}", l.id));
        Ok(TwinUnit {
            id: l.id.clone(),
            world: self.clone(),
        })
    }

    async fn stop(&self, running: TwinUnit, _timeout: Duration) -> String {
        let mut w = self.0.borrow_mut();
        w.states.insert(
            running.id.clone(),
            State::Exited {
                how: "signal 15".into(),
            },
        );
        w.calls.push(format!("stop {}", running.id));
        "signal 15".into()
    }

    fn remove(&self, id: &str) -> Result<(), AgentError> {
        self.0.borrow_mut().calls.push(format!("remove {id}"));
        Ok(())
    }
}

const ID: &str = "web.a.1";

fn desired() -> Desired {
    Desired {
        server: "a".into(),
        address: "127.0.0.1".into(),
        instances: vec![DesiredInstance {
            id: ID.into(),
            type_name: "web".into(),
            index: 1,
            release: Some(Release {
                id: "web_000000000000".into(),
                type_name: "web".into(),
                digest: String::new(),
                files: Vec::new(),
            }),
            config: serde_json::json!({}),
            install: Install::default(),
            run: Some(RunSpec {
                command: vec!["/bin/true".into()],
                env: BTreeMap::new(),
                stop_timeout_ms: 1000,
            }),
            run_state: RunState::Running,
            restart_generation: 0,
            tests: Vec::new(),
            uninstall: Vec::new(),
        }],
    }
}

/// A host where the instance's release is already `current` (no version change to make).
fn host(dir: &std::path::Path) -> Host {
    let host = Host {
        root: dir.to_owned(),
    };
    host.prepare(&desired().instances[0]).unwrap();
    host.switch_current(ID, Some("web_000000000000")).unwrap();
    host
}

fn agent(dir: &std::path::Path, twin: &Twin) -> Agent<Twin> {
    let admin = Admin::new("http://127.0.0.1:9", "a", None).unwrap();
    Agent::new(host(dir), admin, Duration::from_secs(1), twin.clone())
}

#[tokio::test]
async fn what_runs_is_adopted_and_restarting_is_left_to_the_supervisor() {
    let t = tempfile::tempdir().unwrap();
    let twin = Twin::default();
    twin.set(ID, State::Running { pid: 7 });
    let mut a = agent(t.path(), &twin);
    let d = desired();
    a.converge(&d).await;
    assert!(twin.calls().is_empty(), "adopted, not started");
    let o = a.observed(Some(&d), None);
    assert_eq!(o.instances[0].state, ProcessState::Running);
    assert_eq!(o.instances[0].pid, Some(7));
    assert_eq!((o.instances[0].since, o.instances[0].restarts), (42, 2));

    // Crashed, and the supervisor is restarting it: the agent starts nothing itself.
    twin.set(
        ID,
        State::Restarting {
            how: "exit status 1".into(),
        },
    );
    a.converge(&d).await;
    assert!(twin.calls().is_empty(), "{:?}", twin.calls());
    let o = a.observed(Some(&d), None);
    assert_eq!(o.instances[0].state, ProcessState::Failed);
    assert_eq!(o.instances[0].last_exit.as_deref(), Some("exit status 1"));

    // The supervisor gave up: the agent starts it again after its backoff.
    twin.set(
        ID,
        State::Exited {
            how: "exit status 1".into(),
        },
    );
    let start = Instant::now();
    while twin.calls().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "never restarted");
        a.converge(&d).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        start.elapsed() >= FIRST_BACKOFF,
        "restarted without backoff"
    );
    assert_eq!(twin.calls(), vec![format!("start {ID}")]);

    // No longer placed here: stopped, then forgotten by the supervisor.
    a.converge(&Desired {
        instances: Vec::new(),
        ..d
    })
    .await;
    assert_eq!(
        twin.calls()[1..],
        [format!("stop {ID}"), format!("remove {ID}")]
    );
    assert!(!t.path().join("instances").join(ID).exists());
}

#[tokio::test]
async fn an_instance_its_supervisor_does_not_run_is_started_once() {
    let t = tempfile::tempdir().unwrap();
    let twin = Twin::default();
    let mut a = agent(t.path(), &twin);
    let d = desired();
    a.converge(&d).await;
    a.converge(&d).await;
    assert_eq!(twin.calls(), vec![format!("start {ID}")]);
    let o = a.observed(Some(&d), None);
    assert_eq!(o.instances[0].pid, Some(101));
}
