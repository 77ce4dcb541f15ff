//! EKS node lab (being written).
