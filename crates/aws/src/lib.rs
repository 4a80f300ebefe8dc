//! cutover on AWS. Kept in its own crate: the AWS SDK takes minutes to
//! build, and the core and its tests must never wait for it.
#![forbid(unsafe_code)]

pub mod config;
