//! Grouping validated export rows into virtual services.

use super::{DesiredState, Frontend, RealKey, RealServer, ServiceParams, VirtualService};
use portcullis_export::{Export, ExportRow, ServiceKey};

impl DesiredState {
    /// Builds the state from a validated export. Validation already guarantees that rows of
    /// one service agree, so the first row of each service sets its parameters.
    pub fn from_export(export: &Export) -> DesiredState {
        Self::from_grouped(export.by_service().map(|r| &r.row))
    }

    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a ExportRow>) -> DesiredState {
        // Sort once by service, then build each service from its contiguous group and the
        // map from sorted input (a linear bulk build): far cheaper at 100k rows than one
        // ordered-map search per row.
        let mut keyed: Vec<&ExportRow> = rows.into_iter().collect();
        // Stable: rows of a service keep their order, so its first row sets its parameters.
        keyed.sort_by_key(|row| row.service_key());
        Self::from_grouped(keyed)
    }

    /// Builds from rows already ordered by service key.
    fn from_grouped<'a>(rows: impl IntoIterator<Item = &'a ExportRow>) -> DesiredState {
        let rows: Vec<(ServiceKey, &ExportRow)> =
            rows.into_iter().map(|r| (r.service_key(), r)).collect();
        let services = rows
            .chunk_by(|a, b| a.0 == b.0)
            .map(|group| {
                let (key, first) = group[0];
                let service = VirtualService {
                    service: first.service.clone(),
                    proto: first.proto,
                    params: ServiceParams {
                        scheduler: first.scheduler,
                        method: first.method,
                        persistence: first.persistence,
                    },
                    frontends: group
                        .iter()
                        .map(|(_, row)| Frontend {
                            vip: row.vip,
                            ports: row.vport,
                        })
                        .collect(),
                    reals: group
                        .iter()
                        .map(|(_, row)| {
                            let key = RealKey {
                                addr: row.rip,
                                port: row.effective_rport(),
                            };
                            let server = RealServer {
                                weight: row.weight,
                                instance: row.instance.clone(),
                            };
                            (key, server)
                        })
                        .collect(),
                };
                (key, service)
            })
            .collect();
        DesiredState { services }
    }

    /// The rows that describe this state, in a canonical order (the inverse of
    /// [`DesiredState::from_rows`]; used by tests and tools that write exports).
    pub fn to_rows(&self) -> Vec<ExportRow> {
        let mut rows = Vec::new();
        for (key, svc) in &self.services {
            let fwmark = match key {
                super::ServiceKey::Fwmark { mark } => Some(*mark),
                super::ServiceKey::Addr { .. } => None,
            };
            for fe in &svc.frontends {
                for (real, rs) in &svc.reals {
                    rows.push(ExportRow {
                        service: svc.service.clone(),
                        instance: rs.instance.clone(),
                        proto: svc.proto,
                        vip: fe.vip,
                        vport: fe.ports,
                        fwmark,
                        rip: real.addr,
                        // An address service's real port is always known; write it only when
                        // it differs, so a round trip keeps the file's meaning and shape.
                        rport: match fwmark {
                            Some(_) => real.port,
                            None => real.port.filter(|&p| p != fe.ports.first),
                        },
                        weight: rs.weight,
                        scheduler: svc.params.scheduler,
                        method: svc.params.method,
                        persistence: svc.params.persistence,
                        // Checks are not data-plane state (see `model::health`).
                        check: None,
                    });
                }
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../rules/examples/export.csv");

    #[test]
    fn groups_rows_into_services() {
        let export = portcullis_export::parse(EXAMPLE.as_bytes()).expect("example is valid");
        let state = DesiredState::from_export(&export);
        // pgw :80, pgw :443, tg fwmark 7, tgudp fwmark 8, logger udp [2001:db8::514]:514
        assert_eq!(state.services.len(), 5);
        let tg = &state.services[&portcullis_export::ServiceKey::Fwmark { mark: 7 }];
        assert_eq!(tg.frontends.len(), 2);
        assert_eq!(tg.reals.len(), 3);
        assert!(tg.reals.keys().all(|k| k.port.is_none()));
        assert_eq!(state.real_server_count(), 2 + 2 + 3 + 2 + 2);
    }

    #[test]
    fn row_order_does_not_matter_and_rows_round_trip() {
        let export = portcullis_export::parse(EXAMPLE.as_bytes()).expect("example is valid");
        let state = DesiredState::from_export(&export);
        let mut rows = export.rows();
        rows.reverse();
        assert_eq!(DesiredState::from_rows(&rows), state);
        let back = DesiredState::from_rows(&state.to_rows());
        assert_eq!(back, state);
        portcullis_export::validate_rows(&state.to_rows()).expect("re-derived rows are valid");
    }
}
