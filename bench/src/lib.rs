//! The part of tern's benchmark harness that a test runs too: [`chaos`], the whole
//! system (etcd members, controller replicas, agents) under kill -9 while an operator
//! changes the intent, checked for convergence on the final intent.

pub mod certs;
pub mod chaos;
