//! The IPVS generic-netlink decoders (`src/apply/ipvs/`): attribute levels, services,
//! destinations, timeouts and the sync daemon, from what the kernel answers. The input is a
//! genl header (cmd, version, 2 reserved bytes) and the attributes, as in ipvs/fixtures.rs.
//! A service that decodes must survive our own encoder: request, emit, decode, equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};
use portcullis::apply::ipvs::message::{IpvsMessage, Request};
use portcullis::apply::ipvs::{attr, Dest, Service};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let header = GenlHeader {
        cmd: data[0],
        version: data[1],
    };
    let payload = &data[4..];
    let Ok(msg) = IpvsMessage::parse_with_param(payload, header) else {
        return;
    };
    if let Ok(service) = msg.service() {
        let again = decode(Request::new_service(&service))
            .service()
            .expect("our own service request decodes");
        assert_eq!(again, service, "service round trip");
    }
    for ipv6 in [false, true] {
        if let Ok(dest) = msg.dest(ipv6) {
            let again = decode(Request::new_dest(service_of(&msg), &dest))
                .dest(ipv6)
                .expect("our own destination request decodes");
            assert_eq!(again.id, dest.id, "destination round trip");
            assert_eq!(again.method, dest.method);
            assert_eq!(again.weight, dest.weight);
        }
    }
    let _ = msg.timeouts();
    let _ = msg.daemon();
    // The attribute walker and the nested parsers directly, on the raw payload too.
    if let Ok(level) = attr::parse_level(payload) {
        for (_, value) in level {
            let _ = Service::parse(value);
            let _ = Dest::parse(value, false);
            let _ = attr::str_of(value);
        }
    }
});

/// A fixed service to frame a destination request; only the destination is compared.
fn service_of(msg: &IpvsMessage) -> portcullis::apply::ipvs::ServiceId {
    msg.service()
        .map(|s| s.id)
        .unwrap_or(portcullis::apply::ipvs::ServiceId::Fwmark {
            mark: 1,
            ipv6: false,
        })
}

fn decode(request: IpvsMessage) -> IpvsMessage {
    let mut bytes = vec![0; request.buffer_len()];
    request.emit(&mut bytes);
    let header = GenlHeader {
        cmd: request.command(),
        version: request.version(),
    };
    IpvsMessage::parse_with_param(&bytes, header).expect("raw attributes are kept")
}
