//! The daemon turns on the host's expedited RCU grace periods at start (`expedite_rcu`, on by
//! default) and leaves them alone when told not to — against the real /sys switch. A test
//! binary of its own: the switch is host-wide, and no other test may start a daemon while
//! this one watches it.

mod common;

use portcullis::apply::rcu::RCU_EXPEDITED;
use std::process::Stdio;
use std::time::Duration;

fn switch() -> String {
    std::fs::read_to_string(RCU_EXPEDITED)
        .expect("read /sys/kernel/rcu_expedited")
        .trim()
        .to_owned()
}

fn set_switch(value: &str) {
    std::fs::write(RCU_EXPEDITED, value).expect("write /sys/kernel/rcu_expedited");
}

#[test]
fn the_daemon_expedites_rcu_grace_periods_unless_told_not_to() {
    if !common::require_nft() {
        return;
    }
    let was = switch();
    let ns = common::Netns::new("rcu");
    let dir = common::tmp_dir("rcu");
    std::fs::create_dir_all(&dir).expect("dir");
    let source = dir.join("export.csv");
    std::fs::write(
        &source,
        "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n\
         web,web.1,tcp,192.0.2.1,80,,10.0.0.1,8080,1,rr,nat,\n",
    )
    .expect("write the export");
    let start = |extra: &[&str]| {
        ns.command(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--source")
            .arg(format!("file://{}", source.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--interval", "200ms", "--external-iface", "lo"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portcullis run")
    };
    let applied = || {
        ns.command("nft")
            .args(["list", "table", "inet", "portcullis"])
            .output()
            .ok()
            .filter(|o| o.status.success())
    };

    set_switch("0");
    let mut daemon = start(&["--expedite-rcu", "false"]);
    let loaded = common::wait_until(10, applied).is_some();
    std::thread::sleep(Duration::from_millis(300));
    let left_alone = switch();
    common::terminate(&mut daemon);
    assert!(loaded, "the daemon did not apply within 10 s");
    assert_eq!(
        left_alone, "0",
        "expedite_rcu = false must leave the switch alone"
    );

    let mut daemon = start(&[]);
    let turned_on = common::wait_until(10, || (switch() == "1").then_some(()));
    common::terminate(&mut daemon);
    set_switch(&was);
    assert!(
        turned_on.is_some(),
        "the daemon did not turn on expedited grace periods within 10 s"
    );
}
