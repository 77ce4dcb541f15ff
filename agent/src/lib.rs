//! sgpath: node-level diagnostics of EKS security groups for pods.
//!
//! Data flows one way: [`collect`] reads the node into a [`model::Node`], [`model`]
//! classifies it into a [`model::Topology`], [`checks`] turn both into findings, and
//! [`report`] renders them. [`ebpf`] attaches the packet counters.

pub mod checks;
pub mod collect;
pub mod ebpf;
pub mod model;
pub mod plugin;
pub mod report;
