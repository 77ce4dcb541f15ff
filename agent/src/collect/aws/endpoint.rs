//! Where EC2 and STS answer for a Region: the partition's DNS suffix, and the standard
//! settings that change it (AWS's "Endpoints" reference for SDKs and tools):
//! `AWS_USE_FIPS_ENDPOINT`, `AWS_USE_DUALSTACK_ENDPOINT`, `AWS_ENDPOINT_URL` and its
//! per-service forms `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL_STS`, and
//! `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`.
//!
//! The partitions and their suffixes are those of the SDKs' `partitions.json`; a Region
//! that matches none is in `aws`, as the SDKs resolve it. The hostnames follow EC2's and
//! STS's endpoint rule sets: `ec2.<region>.<suffix>`, `ec2-fips.<region>.<suffix>` (but
//! plain `ec2.` in aws-us-gov, where every endpoint is FIPS), and the dual-stack suffix
//! (`api.aws`) for `AWS_USE_DUALSTACK_ENDPOINT`.
//!
//! Pure: the environment comes in as a lookup function.

use std::fmt;

/// An AWS partition: a group of Regions with its own DNS suffix and credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    Aws,
    /// China (`cn-north-1`, `cn-northwest-1`).
    AwsCn,
    /// GovCloud (US) (`us-gov-west-1`, `us-gov-east-1`).
    AwsUsGov,
    /// `us-iso-*`.
    AwsIso,
    /// `us-isob-*`.
    AwsIsoB,
    /// `eu-isoe-*`.
    AwsIsoE,
    /// `us-isof-*`.
    AwsIsoF,
    /// The AWS European Sovereign Cloud (`eusc-de-*`).
    AwsEusc,
}

impl Partition {
    /// The partition of `region` (by the Region's prefix, as `partitions.json`'s
    /// `regionRegex` does; `aws` for anything else).
    pub fn of(region: &str) -> Partition {
        let starts = |p: &str| region.starts_with(p);
        if starts("cn-") {
            Partition::AwsCn
        } else if starts("us-gov-") {
            Partition::AwsUsGov
        } else if starts("us-isob-") {
            Partition::AwsIsoB
        } else if starts("us-isof-") {
            Partition::AwsIsoF
        } else if starts("us-iso-") {
            Partition::AwsIso
        } else if starts("eu-isoe-") {
            Partition::AwsIsoE
        } else if starts("eusc-") {
            Partition::AwsEusc
        } else {
            Partition::Aws
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Partition::Aws => "aws",
            Partition::AwsCn => "aws-cn",
            Partition::AwsUsGov => "aws-us-gov",
            Partition::AwsIso => "aws-iso",
            Partition::AwsIsoB => "aws-iso-b",
            Partition::AwsIsoE => "aws-iso-e",
            Partition::AwsIsoF => "aws-iso-f",
            Partition::AwsEusc => "aws-eusc",
        }
    }

    /// The DNS suffix of its endpoints.
    pub fn dns_suffix(self) -> &'static str {
        match self {
            Partition::Aws | Partition::AwsUsGov => "amazonaws.com",
            Partition::AwsCn => "amazonaws.com.cn",
            Partition::AwsIso => "c2s.ic.gov",
            Partition::AwsIsoB => "sc2s.sgov.gov",
            Partition::AwsIsoE => "cloud.adc-e.uk",
            Partition::AwsIsoF => "csp.hci.ic.gov",
            Partition::AwsEusc => "amazonaws.eu",
        }
    }

    /// The suffix of its dual-stack (IPv4 and IPv6) endpoints, where it has them.
    pub fn dual_stack_dns_suffix(self) -> Option<&'static str> {
        match self {
            Partition::Aws | Partition::AwsUsGov => Some("api.aws"),
            Partition::AwsCn => Some("api.amazonwebservices.com.cn"),
            _ => None,
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The services sgpath calls by a Region's endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Ec2,
    Sts,
}

impl Service {
    /// The hostname's first label, and SigV4's service name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Ec2 => "ec2",
            Service::Sts => "sts",
        }
    }

    /// The service's `AWS_ENDPOINT_URL_<SERVICE>` variable.
    pub fn endpoint_variable(self) -> &'static str {
        match self {
            Service::Ec2 => "AWS_ENDPOINT_URL_EC2",
            Service::Sts => "AWS_ENDPOINT_URL_STS",
        }
    }
}

/// The standard endpoint settings, read once from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `AWS_USE_FIPS_ENDPOINT=true`.
    pub fips: bool,
    /// `AWS_USE_DUALSTACK_ENDPOINT=true`.
    pub dual_stack: bool,
    /// `AWS_ENDPOINT_URL`: every service's endpoint, unless its own variable names one.
    pub endpoint_url: Option<String>,
    /// `AWS_ENDPOINT_URL_EC2`.
    pub ec2_url: Option<String>,
    /// `AWS_ENDPOINT_URL_STS`.
    pub sts_url: Option<String>,
}

/// A setting that is not one.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{variable}={value:?}: not true or false")]
    NotABool {
        variable: &'static str,
        value: String,
    },
    #[error("{variable}={value:?}: not an http:// or https:// URL with a host")]
    NotAUrl {
        variable: &'static str,
        value: String,
    },
    #[error(
        "AWS_USE_DUALSTACK_ENDPOINT: the {partition} partition (region {region}) has no dual-stack endpoints"
    )]
    NoDualStack {
        partition: Partition,
        region: String,
    },
}

impl Settings {
    /// From the environment (`var` looks a variable up; empty counts as unset).
    ///
    /// # Errors
    /// [`EndpointError`] naming the variable whose value is not a boolean or a URL.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Settings, EndpointError> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let flag = |variable: &'static str| match var(variable) {
            None => Ok(false),
            Some(v) if v.trim().eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.trim().eq_ignore_ascii_case("false") => Ok(false),
            Some(value) => Err(EndpointError::NotABool { variable, value }),
        };
        let ignore = flag("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")?;
        let url = |variable: &'static str| -> Result<Option<String>, EndpointError> {
            match var(variable) {
                _ if ignore => Ok(None),
                None => Ok(None),
                Some(value) => check_url(&value)
                    .then(|| Some(value.trim().trim_end_matches('/').to_owned()))
                    .ok_or(EndpointError::NotAUrl { variable, value }),
            }
        };
        Ok(Settings {
            fips: flag("AWS_USE_FIPS_ENDPOINT")?,
            dual_stack: flag("AWS_USE_DUALSTACK_ENDPOINT")?,
            endpoint_url: url("AWS_ENDPOINT_URL")?,
            ec2_url: url(Service::Ec2.endpoint_variable())?,
            sts_url: url(Service::Sts.endpoint_variable())?,
        })
    }

    /// The URL (no trailing `/`) of `service` in `region`: its own variable, else
    /// `AWS_ENDPOINT_URL`, else the partition's endpoint with FIPS and dual-stack as set.
    /// A configured URL wins over FIPS and dual-stack (it names the endpoint exactly).
    ///
    /// # Errors
    /// [`EndpointError::NoDualStack`] for dual-stack in a partition without it.
    pub fn url(&self, service: Service, region: &str) -> Result<String, EndpointError> {
        let own = match service {
            Service::Ec2 => &self.ec2_url,
            Service::Sts => &self.sts_url,
        };
        if let Some(u) = own.as_ref().or(self.endpoint_url.as_ref()) {
            return Ok(u.clone());
        }
        let partition = Partition::of(region);
        let suffix = if self.dual_stack {
            partition
                .dual_stack_dns_suffix()
                .ok_or_else(|| EndpointError::NoDualStack {
                    partition,
                    region: region.to_owned(),
                })?
        } else {
            partition.dns_suffix()
        };
        // GovCloud's endpoints are FIPS endpoints under their plain names.
        let fips = self.fips && partition != Partition::AwsUsGov;
        let label = match fips {
            true => format!("{}-fips", service.name()),
            false => service.name().to_owned(),
        };
        Ok(format!("https://{label}.{region}.{suffix}"))
    }
}

/// `http://host[:port][/path]` or `https://...`.
fn check_url(s: &str) -> bool {
    let s = s.trim();
    s.strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, EndpointError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_env(|k| vars.get(k).cloned())
    }

    /// Each partition's suffix, from the Region alone (the hostnames SDKs resolve).
    #[test]
    fn the_region_picks_the_partition_and_its_suffix() {
        let s = Settings::default();
        for (region, ec2, partition) in [
            (
                "us-east-1",
                "https://ec2.us-east-1.amazonaws.com",
                Partition::Aws,
            ),
            (
                "cn-north-1",
                "https://ec2.cn-north-1.amazonaws.com.cn",
                Partition::AwsCn,
            ),
            (
                "us-gov-west-1",
                "https://ec2.us-gov-west-1.amazonaws.com",
                Partition::AwsUsGov,
            ),
            (
                "us-iso-east-1",
                "https://ec2.us-iso-east-1.c2s.ic.gov",
                Partition::AwsIso,
            ),
            (
                "us-isob-east-1",
                "https://ec2.us-isob-east-1.sc2s.sgov.gov",
                Partition::AwsIsoB,
            ),
            (
                "eu-isoe-west-1",
                "https://ec2.eu-isoe-west-1.cloud.adc-e.uk",
                Partition::AwsIsoE,
            ),
            (
                "us-isof-south-1",
                "https://ec2.us-isof-south-1.csp.hci.ic.gov",
                Partition::AwsIsoF,
            ),
            (
                "eusc-de-east-1",
                "https://ec2.eusc-de-east-1.amazonaws.eu",
                Partition::AwsEusc,
            ),
            // A Region newer than this table is in `aws`, as the SDKs resolve it.
            (
                "xx-new-9",
                "https://ec2.xx-new-9.amazonaws.com",
                Partition::Aws,
            ),
        ] {
            assert_eq!(Partition::of(region), partition, "{region}");
            assert_eq!(s.url(Service::Ec2, region).unwrap(), ec2);
        }
        assert_eq!(
            s.url(Service::Sts, "cn-northwest-1").unwrap(),
            "https://sts.cn-northwest-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn fips_and_dual_stack_from_the_standard_settings() {
        let fips = settings(&[("AWS_USE_FIPS_ENDPOINT", "true")]).unwrap();
        assert_eq!(
            fips.url(Service::Ec2, "us-east-2").unwrap(),
            "https://ec2-fips.us-east-2.amazonaws.com"
        );
        assert_eq!(
            fips.url(Service::Sts, "us-east-2").unwrap(),
            "https://sts-fips.us-east-2.amazonaws.com"
        );
        // GovCloud: every endpoint is FIPS, under the plain name.
        assert_eq!(
            fips.url(Service::Ec2, "us-gov-east-1").unwrap(),
            "https://ec2.us-gov-east-1.amazonaws.com"
        );
        let dual = settings(&[("AWS_USE_DUALSTACK_ENDPOINT", "TRUE")]).unwrap();
        assert_eq!(
            dual.url(Service::Ec2, "eu-west-1").unwrap(),
            "https://ec2.eu-west-1.api.aws"
        );
        assert_eq!(
            dual.url(Service::Ec2, "cn-north-1").unwrap(),
            "https://ec2.cn-north-1.api.amazonwebservices.com.cn"
        );
        let both = settings(&[
            ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
            ("AWS_USE_FIPS_ENDPOINT", "true"),
        ])
        .unwrap();
        assert_eq!(
            both.url(Service::Ec2, "us-west-2").unwrap(),
            "https://ec2-fips.us-west-2.api.aws"
        );
        assert_eq!(
            dual.url(Service::Ec2, "us-iso-east-1")
                .unwrap_err()
                .to_string(),
            "AWS_USE_DUALSTACK_ENDPOINT: the aws-iso partition (region us-iso-east-1) has no dual-stack endpoints"
        );
        assert_eq!(
            settings(&[("AWS_USE_FIPS_ENDPOINT", "yes")])
                .unwrap_err()
                .to_string(),
            "AWS_USE_FIPS_ENDPOINT=\"yes\": not true or false"
        );
        assert!(
            !settings(&[("AWS_USE_FIPS_ENDPOINT", "false")])
                .unwrap()
                .fips
        );
    }

    /// The per-service variable beats the global one, which beats the Region's endpoint
    /// (FIPS included); `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` turns both off.
    #[test]
    fn endpoint_urls_per_service_then_global() {
        let s = settings(&[
            ("AWS_ENDPOINT_URL", "http://localstack:4566/"),
            ("AWS_ENDPOINT_URL_STS", "https://sts.vpce.example"),
            ("AWS_USE_FIPS_ENDPOINT", "true"),
        ])
        .unwrap();
        assert_eq!(
            s.url(Service::Sts, "us-east-1").unwrap(),
            "https://sts.vpce.example"
        );
        assert_eq!(
            s.url(Service::Ec2, "us-east-1").unwrap(),
            "http://localstack:4566"
        );
        let ignored = settings(&[
            ("AWS_ENDPOINT_URL", "http://localstack:4566"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ])
        .unwrap();
        assert_eq!(
            ignored.url(Service::Sts, "us-east-1").unwrap(),
            "https://sts.us-east-1.amazonaws.com"
        );
        assert_eq!(
            settings(&[("AWS_ENDPOINT_URL_EC2", "ec2.internal")])
                .unwrap_err()
                .to_string(),
            "AWS_ENDPOINT_URL_EC2=\"ec2.internal\": not an http:// or https:// URL with a host"
        );
    }
}
