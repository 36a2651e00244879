//! The ctnetlink dump-reply decoder (`src/apply/conntrack/message.rs`): one netlink message
//! as the kernel sends it, through the same path `ConntrackNetlink::flows` takes. A decoded
//! flow names both tuples; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(flow)) = portcullis::apply::fuzz_decode_conntrack_reply(data) {
        // Both tuples carry addresses of the message's family (the delete request reuses them).
        assert_eq!(flow.orig.src.is_ipv4(), flow.orig.dst.is_ipv4(), "{flow:?}");
    }
});
