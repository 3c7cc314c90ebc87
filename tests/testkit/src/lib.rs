//! Test harness for tern: real etcd servers, certificates, network namespaces, and the
//! routers (BIRD, FRR, GoBGP) tern peers with.
//! Everything a harness object creates is removed when it is dropped.

pub mod agent;
pub mod etcd;
pub mod netns;
pub mod pools;
pub mod routers;
