use super::*;
use crate::model::health::Probe;

const INTERVAL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_millis(900);
const PORTS: [u16; 3] = [40001, 40002, 40003];

fn settings(max_concurrent: usize) -> HealthConfig {
    HealthConfig {
        interval: INTERVAL,
        timeout: TIMEOUT,
        max_concurrent,
        ..HealthConfig::default()
    }
}

fn target(i: u8) -> Target {
    Target {
        endpoint: SocketAddr::from(([10, 0, 0, i], 8080)),
        probe: Probe::Tcp,
    }
}

fn v4(t: &Target) -> SocketAddrV4 {
    match t.endpoint {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("an IPv4 target"),
    }
}

/// Steps `schedule` tick by tick from `from` to `to`; the SYNs it wanted, with when.
fn run(
    schedule: &mut Schedule,
    from: Instant,
    to: Instant,
    ended: &mut Vec<Ended>,
) -> Vec<(Instant, Wanted)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        let mut syns = Vec::new();
        schedule.due(now, &mut syns, ended);
        out.extend(syns.into_iter().map(|s| (now, s)));
        now += TICK;
    }
    out
}

/// Steps `schedule` tick by tick from `from` until `n` targets had their first SYN; those,
/// and the tick it was.
fn first_syns(schedule: &mut Schedule, from: Instant, n: usize) -> (Instant, Vec<Wanted>) {
    let (mut now, mut firsts, mut ended) = (from, Vec::<Wanted>::new(), Vec::new());
    loop {
        assert!(now < from + INTERVAL * 2, "only {firsts:?} probed");
        let mut syns = Vec::new();
        schedule.due(now, &mut syns, &mut ended);
        for w in syns {
            if !firsts.iter().any(|f| f.to == w.to) {
                firsts.push(w);
            }
        }
        if firsts.len() >= n {
            assert!(ended.is_empty(), "{ended:?}");
            return (now, firsts);
        }
        now += TICK;
    }
}

/// A schedule of the one target `i`, set up at `t0` and stepped until its first SYN: the
/// schedule, the tick of that SYN, and the SYN.
fn probing(i: u8, t0: Instant) -> (Schedule, Instant, Wanted) {
    let mut s = Schedule::new(&settings(256), PORTS.to_vec());
    s.set_targets(&[target(i)].into(), t0);
    let (at, firsts) = first_syns(&mut s, t0, 1);
    (s, at, firsts[0])
}

fn reply(w: &Wanted, ack: u32, answer: Answer) -> Reply {
    Reply {
        from: w.to,
        to_port: w.port,
        ack,
        answer,
    }
}

#[test]
fn a_new_target_is_probed_within_one_interval_and_an_answer_ends_its_probe() {
    let t0 = Instant::now();
    let (mut s, at, first) = probing(1, t0);
    assert!(at <= t0 + INTERVAL + TICK * 2, "within one interval");
    assert_eq!(first.to, v4(&target(1)));
    assert!(PORTS.contains(&first.port));

    // Answers that do not acknowledge this probe's SYN, or reach another port, are ignored.
    // The answer arrives 30 ms after the SYN and is read a tick later.
    let arrived = at + Duration::from_millis(30);
    let later = arrived + TICK;
    assert!(s
        .answer(reply(&first, first.seq, Answer::Listening), arrived, later)
        .is_none());
    let mut elsewhere = reply(&first, first.seq.wrapping_add(1), Answer::Listening);
    elsewhere.to_port = 1;
    assert!(s.answer(elsewhere, arrived, later).is_none());

    let e = s
        .answer(
            reply(&first, first.seq.wrapping_add(1), Answer::Listening),
            arrived,
            later,
        )
        .expect("the probe ends");
    assert_eq!(e.target, target(1));
    assert!(e.result.is_ok());
    assert_eq!(
        e.latency,
        Duration::from_millis(30),
        "up to the arrival, not the read"
    );
    // Once only.
    assert!(s
        .answer(
            reply(&first, first.seq.wrapping_add(1), Answer::Listening),
            arrived,
            later
        )
        .is_none());

    // The next probe comes one interval later (±10 %, on the grid), from the next port;
    // the resend the answer made needless is not sent.
    let mut ended = Vec::new();
    let syns = run(
        &mut s,
        later,
        later + INTERVAL.mul_f64(1.1) + TICK * 2,
        &mut ended,
    );
    let (at, second) = *syns.first().expect("a next probe");
    assert!(
        syns.iter().all(|(_, w)| *w == second),
        "only that probe (and its resends): {syns:?}"
    );
    let pause = at - later;
    assert!(
        pause >= INTERVAL.mul_f64(0.9) && pause <= INTERVAL.mul_f64(1.1) + TICK * 2,
        "{pause:?}"
    );
    assert_ne!(second.port, first.port, "ports rotate");
    assert_ne!(second.seq, first.seq);
}

#[test]
fn an_unanswered_probe_is_resent_twice_then_times_out() {
    let mut s = Schedule::new(&settings(256), PORTS.to_vec());
    let t0 = Instant::now();
    s.set_targets(&[target(1)].into(), t0);
    let mut ended = Vec::new();
    let syns = run(&mut s, t0, t0 + INTERVAL + TIMEOUT + TICK * 2, &mut ended);
    assert_eq!(syns.len(), ATTEMPTS as usize, "{syns:?}");
    let (start, first) = syns[0];
    for (i, (at, w)) in syns.iter().enumerate() {
        assert_eq!(*w, first, "a resend is the same SYN");
        let due = start + TIMEOUT / ATTEMPTS * i as u32;
        assert!(
            *at >= due && *at < due + TICK * 2,
            "attempt {i}: {at:?} vs {due:?}"
        );
    }
    assert_eq!(ended.len(), 1);
    assert!(matches!(ended[0].result, Err(ProbeError::Timeout(t)) if t == TIMEOUT));
    // A late answer to the timed-out probe changes nothing.
    assert!(s
        .answer(
            reply(&first, first.seq.wrapping_add(1), Answer::Listening),
            start + TIMEOUT * 2,
            start + TIMEOUT * 2
        )
        .is_none());
}

#[test]
fn a_reset_is_a_refusal_and_a_failed_send_fails_the_probe_with_why() {
    let t0 = Instant::now();
    let (mut s, now, syn) = probing(1, t0);
    let e = s
        .answer(
            reply(&syn, syn.seq.wrapping_add(1), Answer::Refused),
            now,
            now,
        )
        .expect("ends");
    assert!(e.result.is_err_and(|e| e.to_string().contains("refused")));

    let (mut s, now, syn) = probing(2, t0);
    let e = s
        .failed(syn.to, io::ErrorKind::NetworkUnreachable.into(), now)
        .expect("ends");
    assert!(e
        .result
        .is_err_and(|e| e.to_string().contains("unreachable")));
}

#[test]
fn at_most_max_concurrent_probes_are_in_flight() {
    let mut s = Schedule::new(&settings(2), PORTS.to_vec());
    let t0 = Instant::now();
    let targets: BTreeSet<Target> = (1..=5).map(target).collect();
    s.set_targets(&targets, t0);
    let mut ended = Vec::new();
    // Nothing answers: each probe holds its place until its deadline.
    let syns = run(&mut s, t0, t0 + INTERVAL, &mut ended);
    let mut started: Vec<(Instant, SocketAddrV4)> = Vec::new();
    for (at, w) in &syns {
        if !started.iter().any(|(_, d)| *d == w.to) {
            started.push((*at, w.to));
        }
    }
    for (at, _) in &started {
        let overlapping = started
            .iter()
            .filter(|(b, _)| *b <= *at && *at < *b + TIMEOUT)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} in flight at {at:?}: {started:?}"
        );
    }
}

#[test]
fn a_target_removed_mid_probe_frees_its_place_and_its_answer_is_ignored() {
    let mut s = Schedule::new(&settings(1), PORTS.to_vec());
    let t0 = Instant::now();
    s.set_targets(&[target(1), target(2)].into(), t0);
    let mut ended = Vec::new();
    let mut syns = Vec::new();
    let mut now = t0;
    while syns.is_empty() {
        now += TICK;
        s.due(now, &mut syns, &mut ended);
    }
    let first = syns[0];
    let (gone, stays) = if first.to == v4(&target(1)) {
        (target(1), target(2))
    } else {
        (target(2), target(1))
    };
    s.set_targets(&[stays.clone()].into(), now);
    assert_eq!(s.targets(), 1);
    assert!(s
        .answer(
            reply(&first, first.seq.wrapping_add(1), Answer::Listening),
            now,
            now
        )
        .is_none());
    // The one place in flight is free again: the other target is probed.
    let later = run(&mut s, now, now + INTERVAL + TICK, &mut ended);
    assert!(later.iter().all(|(_, w)| w.to == v4(&stays)), "{later:?}");
    assert!(!later.is_empty(), "{} never probed", stays.endpoint);
    assert!(ended.iter().all(|e| e.target != gone));
}

#[test]
fn only_ipv4_tcp_checks_are_swept() {
    assert!(takes(&target(1)));
    let v6 = Target {
        endpoint: "[2001:db8::1]:80".parse().expect("addr"),
        probe: Probe::Tcp,
    };
    assert!(!takes(&v6));
    let http = Target {
        endpoint: target(1).endpoint,
        probe: Probe::Http {
            path: "/".into(),
            status: 200,
            host: None,
        },
    };
    assert!(!takes(&http));
    let mut s = Schedule::new(&settings(256), PORTS.to_vec());
    s.set_targets(&[target(1), v6, http].into(), Instant::now());
    assert_eq!(s.targets(), 1);
}

#[test]
fn a_source_is_looked_up_once_and_again_after_a_probe_went_unanswered() {
    let (mut s, now, syn) = probing(1, Instant::now());
    assert_eq!(syn.source, None, "nothing cached yet");
    let src = Ipv4Addr::new(10, 0, 0, 254);
    s.set_source(syn.to, src, now);
    let mut ended = Vec::new();
    // The resends and the probe after them carry it…
    let later = run(&mut s, now + TICK, now + TIMEOUT + TICK * 2, &mut ended);
    assert!(
        !later.is_empty() && later.iter().all(|(_, w)| w.source == Some(src)),
        "{later:?}"
    );
    // …until the probe times out: the route may have changed, so it is asked again.
    assert!(matches!(ended.as_slice(), [e] if matches!(e.result, Err(ProbeError::Timeout(_)))));
    let next = run(
        &mut s,
        now + TIMEOUT + TICK * 3,
        now + INTERVAL * 2,
        &mut ended,
    );
    assert_eq!(next.first().map(|(_, w)| w.source), Some(None), "{next:?}");
}
