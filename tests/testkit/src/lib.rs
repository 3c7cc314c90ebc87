//! Test harness for tern: real etcd servers, certificates, network namespaces.
//! Everything a harness object creates is removed when it is dropped.

pub mod etcd;
pub mod netns;
