//! sgpath: node-level diagnostics of EKS security groups for pods.
//!
//! Data flows one way: [`collect`] reads the node into a [`model::Node`], [`model`]
//! classifies it into a [`model::Topology`], [`checks`] turn both into findings, and
//! [`report`] renders them. [`ebpf`] attaches the packet counters. [`hub`] is `sgpath hub`,
//! the cluster's one reader of EC2, and the agents' client of it.

pub mod auth;
pub mod checks;
pub mod collect;
pub mod ebpf;
pub mod hub;
pub mod model;
pub mod plugin;
pub mod report;
pub mod tls;
