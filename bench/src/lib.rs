//! The part of tern's benchmark harness that a test runs too: [`chaos`], the whole
//! system (etcd members, controller replicas, agents) under kill -9 while an operator
//! changes the intent, checked for convergence on the final intent.

pub mod certs;
pub mod chaos;

/// The environment deploy/systemd/tern-controller.service gives the controller (its
/// `Environment=` lines): the benchmarks measure the process as it is deployed.
pub fn deployed_controller_env() -> Vec<(&'static str, &'static str)> {
    include_str!("../../deploy/systemd/tern-controller.service")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .collect()
}
