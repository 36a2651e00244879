//! What a desired state asks of IPVS: one virtual service per model service, its real servers
//! as destinations. Pure: no kernel here.

use super::constants::IP_VS_SVC_F_PERSISTENT;
use super::{Dest, DestId, Service, ServiceId, ServiceWithDests, Table};
use crate::model::{DesiredState, ServiceKey, VirtualService};

/// The IPVS table a desired state asks for: one service per model service; destinations
/// with the service's forwarding method; ipvsadm's defaults for what the export does not set
/// (persistence netmask /32 or /128, no thresholds).
pub fn desired_table(state: &DesiredState) -> Table {
    state
        .services
        .iter()
        .map(|(k, svc)| service_with_dests(k, svc))
        .collect()
}

/// The part of [`desired_table`] for the services `keys` name (those a diff says changed);
/// keys the state no longer has are simply absent.
pub fn desired_subset(state: &DesiredState, keys: &[ServiceKey]) -> Table {
    keys.iter()
        .filter_map(|k| state.services.get_key_value(k))
        .map(|(k, svc)| service_with_dests(k, svc))
        .collect()
}

/// The IPVS identities a model key can stand for (an fwmark service exists per family).
pub fn candidates(key: &ServiceKey) -> Vec<ServiceId> {
    match key {
        ServiceKey::Addr { proto, vip, port } => vec![ServiceId::Addr {
            proto: *proto,
            addr: *vip,
            port: *port,
        }],
        ServiceKey::Fwmark { mark } => vec![
            ServiceId::Fwmark {
                mark: *mark,
                ipv6: false,
            },
            ServiceId::Fwmark {
                mark: *mark,
                ipv6: true,
            },
        ],
    }
}

fn service_with_dests(key: &ServiceKey, svc: &VirtualService) -> (ServiceId, ServiceWithDests) {
    let ipv6 = svc.is_ipv6();
    let id = match key {
        ServiceKey::Addr { proto, vip, port } => ServiceId::Addr {
            proto: *proto,
            addr: *vip,
            port: *port,
        },
        ServiceKey::Fwmark { mark } => ServiceId::Fwmark { mark: *mark, ipv6 },
    };
    let service = Service {
        id,
        scheduler: svc.params.scheduler.to_string(),
        flags: if svc.params.persistence.is_some() {
            IP_VS_SVC_F_PERSISTENT
        } else {
            0
        },
        timeout: svc.params.persistence.unwrap_or(0),
        netmask: if ipv6 { 128 } else { u32::MAX },
    };
    let dests = svc
        .reals
        .iter()
        .map(|(rk, rs)| {
            let did = DestId {
                addr: rk.addr,
                port: rk.port.unwrap_or(0),
            };
            (did, Dest::new(did, svc.params.method, u32::from(rs.weight)))
        })
        .collect();
    (id, ServiceWithDests { service, dests })
}
