//! The VPC CNI's config file (`cat /etc/cni/net.d/10-aws.conflist`).

use std::path::Path;

use serde_json::Value;

use crate::model::{CniConfig, EnforcingMode};

/// Why a CNI config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CniConfigError {
    #[error("cannot read CNI config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CNI config {path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("CNI config {path}: {problem}")]
    Shape { path: String, problem: String },
}

/// Read and parse the conflist. `Ok(None)` when the file does not exist (a node without
/// the VPC CNI, or a debugging session off-node): that is normal, not an error.
///
/// # Errors
/// [`CniConfigError`] naming the file and what is wrong with it.
pub fn read(path: &Path) -> Result<Option<CniConfig>, CniConfigError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CniConfigError::Read {
                path: shown,
                source,
            });
        }
    };
    parse(&shown, &text).map(Some)
}

/// Parse conflist text: the `aws-cni` plugin entry holds `podSGEnforcingMode`,
/// `vethPrefix` and `mtu` (the last two are strings in the CNI's template).
///
/// # Errors
/// [`CniConfigError::Json`] or [`CniConfigError::Shape`].
pub fn parse(path: &str, text: &str) -> Result<CniConfig, CniConfigError> {
    let shape = |problem: String| CniConfigError::Shape {
        path: path.to_string(),
        problem,
    };
    let doc: Value = serde_json::from_str(text).map_err(|source| CniConfigError::Json {
        path: path.to_string(),
        source,
    })?;
    let plugins = doc
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("no \"plugins\" array (is this a .conflist?)".into()))?;
    let types: Vec<String> = plugins
        .iter()
        .filter_map(|p| p.get("type")?.as_str().map(String::from))
        .collect();
    let aws = plugins
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("aws-cni"))
        .ok_or_else(|| {
            shape(format!(
                "no plugin of type \"aws-cni\" (plugins: {types:?})"
            ))
        })?;
    let enforcing_mode = match aws.get("podSGEnforcingMode") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            s.parse::<EnforcingMode>()
                .map_err(|e| shape(e.to_string()))?,
        ),
        Some(other) => {
            return Err(shape(format!(
                "podSGEnforcingMode must be a string, found {other}"
            )));
        }
    };
    let veth_prefix = match aws.get("vethPrefix").or_else(|| aws.get("vethprefix")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => {
            return Err(shape(format!(
                "vethPrefix must be a non-empty string, found {other}"
            )));
        }
    };
    let mtu = match aws.get("mtu") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<u32>()
                .map_err(|_| shape(format!("mtu {s:?} is not a number")))?,
        ),
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| shape(format!("mtu {n} is out of range")))?,
        ),
        Some(other) => return Err(shape(format!("mtu must be a number, found {other}"))),
    };
    Ok(CniConfig {
        path: path.to_string(),
        enforcing_mode,
        veth_prefix,
        mtu,
        plugins: types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = r#"{"cniVersion":"0.4.0","name":"aws-cni","disableCheck":true,"plugins":[
      {"name":"aws-cni","type":"aws-cni","vethPrefix":"eni","mtu":"9001","podSGEnforcingMode":"strict",
       "pluginLogFile":"/var/log/aws-routed-eni/plugin.log","pluginLogLevel":"DEBUG"},
      {"name":"egress-cni","type":"egress-cni","mtu":"9001","enabled":"false"},
      {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}"#;

    #[test]
    fn reads_mode_prefix_mtu_and_plugin_chain() {
        let c = parse("10-aws.conflist", REAL).unwrap();
        assert_eq!(c.enforcing_mode, Some(EnforcingMode::Strict));
        assert_eq!(c.veth_prefix.as_deref(), Some("eni"));
        assert_eq!(c.mtu, Some(9001));
        assert_eq!(c.plugins, ["aws-cni", "egress-cni", "portmap"]);
    }

    #[test]
    fn malformed_json_names_the_file() {
        let e = parse("/etc/cni/net.d/10-aws.conflist", "{\"plugins\": [").unwrap_err();
        assert!(
            e.to_string()
                .contains("/etc/cni/net.d/10-aws.conflist is not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn unknown_mode_is_a_shape_error() {
        let e = parse(
            "f",
            r#"{"plugins":[{"type":"aws-cni","podSGEnforcingMode":"lenient"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown podSGEnforcingMode \"lenient\""),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_not_an_error() {
        assert!(
            read(Path::new("/nonexistent/10-aws.conflist"))
                .unwrap()
                .is_none()
        );
    }
}
