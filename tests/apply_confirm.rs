//! `portcullis apply --once` as netops use it by hand, against the real kernel in a network
//! namespace: the guard and `--force`, and commit-confirm (`--confirm-within` + `confirm`)
//! rolling back to exactly the previous table when nobody confirms, on Ctrl-C, and through a
//! lost SSH session (SIGHUP), or refusing when the previous table cannot be restored exactly.

mod common;

use common::{require_nft, Netns};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

struct Bench {
    ns: Netns,
    dir: PathBuf,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        let dir = common::tmp_dir(&format!("confirm-{tag}"));
        Bench {
            ns: Netns::new(tag),
            dir,
        }
    }

    /// An export of `services` synthetic services, written once under `name`.
    fn export(&self, name: &str, services: usize) -> PathBuf {
        let path = self.dir.join(name);
        let rows = portcullis::synth::rows_with_services(services);
        std::fs::write(&path, portcullis_export::to_string(&rows).expect("valid")).expect("write");
        path
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn apply(&self, export: &Path, extra: &[&str]) -> Command {
        let mut c = self.ns.command(env!("CARGO_BIN_EXE_portcullis"));
        c.args(["apply", "--once", "--external-iface", "lo", "--source"])
            .arg(export)
            .arg("--state-dir")
            .arg(self.state())
            .args(extra);
        c
    }

    fn run(&self, export: &Path, extra: &[&str]) -> Output {
        self.apply(export, extra).output().expect("apply")
    }

    fn spawn(&self, export: &Path, extra: &[&str]) -> Child {
        self.apply(export, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apply")
    }

    /// The table as nft lists it; `None` when there is none.
    fn table(&self) -> Option<String> {
        let out = self
            .ns
            .command("nft")
            .args(["list", "table", "inet", "portcullis"])
            .output()
            .expect("nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn confirm(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("confirm")
            .arg("--state-dir")
            .arg(self.state())
            .output()
            .expect("confirm")
    }

    /// The pid of the apply waiting for confirmation, once it waits.
    fn waiting_pid(&self) -> Option<String> {
        let pending = self.state().join("confirm-pending");
        common::wait_until(20, || std::fs::read_to_string(&pending).ok())
            .and_then(|t| t.split_whitespace().next().map(str::to_owned))
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().expect("wait");
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn an_unconfirmed_apply_rolls_back_to_exactly_the_previous_table() {
    if !require_nft() {
        return;
    }
    let b = Bench::new("rollback");
    let (a, next) = (b.export("a.csv", 6), b.export("b.csv", 8));
    let first = b.run(&a, &[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let before = b.table().expect("table after the first apply");

    // Nobody confirms: back to exactly the old table.
    let out = b.run(&next, &["--confirm-within", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("rolled back"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        b.table().as_ref(),
        Some(&before),
        "byte-identical after the rollback"
    );

    // Confirmed: the change stays and becomes the last-known-good.
    let child = b.spawn(&next, &["--confirm-within", "30s"]);
    assert!(
        b.waiting_pid().is_some(),
        "the apply waits for confirmation"
    );
    let applied = b.table();
    let confirmed = b.confirm();
    assert_eq!(
        confirmed.status.code(),
        Some(0),
        "{}",
        text(&confirmed.stderr)
    );
    let (code, output) = finish(child);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("confirmed"), "{output}");
    assert_ne!(applied.as_ref(), Some(&before));
    assert_eq!(b.table(), applied, "the confirmed change stays");

    // Ctrl-C rolls back at once, to the confirmed table.
    let child = b.spawn(&a, &["--confirm-within", "60s"]);
    let pid = b.waiting_pid().expect("waiting");
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let (code, output) = finish(child);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("interrupted"), "{output}");
    assert_eq!(b.table(), applied);

    // A lost SSH session (SIGHUP) does not stop the clock: the rollback still happens.
    let child = b.spawn(&a, &["--confirm-within", "2s"]);
    let pid = b.waiting_pid().expect("waiting");
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    let (code, output) = finish(child);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("not confirmed within 2s"), "{output}");
    assert_eq!(b.table(), applied);

    let log = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["log", "--state-dir"])
        .arg(b.state())
        .output()
        .expect("log");
    let log = text(&log.stdout);
    assert_eq!(log.matches("rolled back").count(), 3, "{log}");

    // With nothing waiting, confirm says so.
    assert_eq!(b.confirm().status.code(), Some(1));
}

#[test]
fn rollback_of_a_first_apply_removes_the_table_and_a_drifted_table_is_refused() {
    if !require_nft() {
        return;
    }
    let b = Bench::new("confirm-fresh");
    let a = b.export("a.csv", 3);
    let out = b.run(&a, &["--confirm-within", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(b.table(), None, "there was no table: there is none again");

    assert_eq!(b.run(&a, &[]).status.code(), Some(0));
    b.ns.exec(&[
        "nft",
        "add",
        "element",
        "inet",
        "portcullis",
        "external_ifaces",
        "{ \"eth9\" }",
    ]);
    let hand_edited = b.table();
    let out = b.run(&b.export("b.csv", 4), &["--confirm-within", "5s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("could not be restored exactly"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(b.table(), hand_edited, "refused before touching anything");
}

#[test]
fn the_guard_refuses_a_mass_withdrawal_unless_forced() {
    if !require_nft() {
        return;
    }
    let b = Bench::new("confirm-guard");
    assert_eq!(b.run(&b.export("ten.csv", 10), &[]).status.code(), Some(0));
    let before = b.table();
    let two = b.export("two.csv", 2);
    let out = b.run(&two, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(b.table(), before, "refused: nothing changed");
    let out = b.run(&two, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_ne!(b.table(), before);
}

/// Two applies from one state directory never interleave (the IPVS kill loop saw overlapping
/// applies corrupt each other's ownership view): while one waits for confirmation, holding
/// the state directory, a second is refused at once and changes nothing.
#[test]
fn a_second_apply_is_refused_while_one_is_in_progress() {
    if !require_nft() {
        return;
    }
    let b = Bench::new("apply-lock");
    let (a, next) = (b.export("a.csv", 4), b.export("b.csv", 5));
    assert_eq!(b.run(&a, &[]).status.code(), Some(0));
    let child = b.spawn(&next, &["--confirm-within", "30s"]);
    assert!(b.waiting_pid().is_some(), "the first apply waits");
    let during = b.table();
    let second = b.run(&a, &[]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second.stderr));
    assert!(
        text(&second.stderr).contains("another apply is changing the kernel"),
        "{}",
        text(&second.stderr)
    );
    assert_eq!(b.table(), during, "the refused apply changed nothing");
    assert_eq!(b.confirm().status.code(), Some(0));
    let (code, output) = finish(child);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        b.run(&a, &[]).status.code(),
        Some(0),
        "free again once it is done"
    );
}
