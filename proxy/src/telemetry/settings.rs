//! Telemetry settings, from Istio's MeshConfig (`accessLogFile`, `accessLogEncoding`,
//! `accessLogFormat`, `enableTracing`, `defaultConfig.tracing.sampling`, an
//! `opentelemetry` entry of `extensionProviders` named by `defaultProviders.tracing`)
//! and `warden-proxy run`'s flags, which win.

use std::path::PathBuf;

use super::access_log::{Encoding, Format};
use super::writer::Sink;

/// The MeshConfig keys read here (the rest of MeshConfig is read elsewhere).
pub const MESH_KEYS: &[&str] = &[
    "accessLogFile",
    "accessLogEncoding",
    "accessLogFormat",
    "enableTracing",
    "defaultConfig",
    "extensionProviders",
    "defaultProviders",
];

/// Istio's default sampling percentage (`defaultConfig.tracing.sampling`).
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// What to log and trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// `accessLogFile`: `None` off, `/dev/stdout`, or a file.
    pub access_log_file: Option<String>,
    /// `accessLogEncoding`.
    pub access_log_encoding: Encoding,
    /// `accessLogFormat`.
    pub access_log_format: Option<String>,
    /// A file log is rotated past this many bytes (0: never).
    pub access_log_max_bytes: u64,
    /// Rotated files kept.
    pub access_log_keep: usize,
    /// The OTLP/gRPC collector (`http://host:port`): tracing is on when set.
    pub otlp_endpoint: Option<String>,
    /// Percentage of new traces sampled, 0 to 100.
    pub sampling: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            access_log_file: None,
            access_log_encoding: Encoding::Text,
            access_log_format: None,
            access_log_max_bytes: 100 * 1024 * 1024,
            access_log_keep: 5,
            otlp_endpoint: None,
            sampling: DEFAULT_SAMPLING,
        }
    }
}

/// The flags that override MeshConfig.
#[derive(Debug, Clone, Default)]
pub struct TelemetryFlags {
    /// `--access-log-file` (empty: off).
    pub access_log_file: Option<String>,
    /// `--access-log-encoding`.
    pub access_log_encoding: Option<String>,
    /// `--access-log-format`.
    pub access_log_format: Option<String>,
    /// `--access-log-max-bytes`.
    pub access_log_max_bytes: Option<u64>,
    /// `--access-log-keep`.
    pub access_log_keep: Option<usize>,
    /// `--tracing-otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
    /// `--tracing-sampling`.
    pub sampling: Option<f64>,
}

fn sampling(v: f64, what: &str) -> Result<f64, String> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what}: {v} is not a percentage from 0 to 100"))
    }
}

/// Checks an OTLP endpoint: `http://host:port` (Warden exports in plaintext gRPC, to a
/// collector on the node or in the cluster).
pub fn check_endpoint(e: &str, what: &str) -> Result<(), String> {
    let uri: http::Uri = e
        .parse()
        .map_err(|err| format!("{what}: {e:?} is not a URI: {err}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() || uri.port_u16().is_none() {
        return Err(format!(
            "{what}: {e:?}: expected http://host:port (OTLP over gRPC, plaintext)"
        ));
    }
    Ok(())
}

impl TelemetrySettings {
    /// Reads the telemetry keys of a MeshConfig mapping; a wrong value is an error
    /// naming the field.
    pub fn from_mesh(mesh: &serde_json::Value) -> Result<Self, String> {
        let mut s = Self::default();
        if let Some(f) = mesh.get("accessLogFile") {
            let f = f
                .as_str()
                .ok_or("accessLogFile: expected a path, /dev/stdout or \"\"")?;
            s.access_log_file = (!f.is_empty()).then(|| f.to_string());
        }
        if let Some(e) = mesh.get("accessLogEncoding") {
            let e = e
                .as_str()
                .ok_or("accessLogEncoding: expected TEXT or JSON")?;
            s.access_log_encoding =
                Encoding::parse(e).map_err(|err| format!("accessLogEncoding: {err}"))?;
        }
        if let Some(f) = mesh.get("accessLogFormat") {
            let f = f.as_str().ok_or("accessLogFormat: expected a string")?;
            s.access_log_format = (!f.trim().is_empty()).then(|| f.to_string());
        }
        let enabled = match mesh.get("enableTracing") {
            None => true,
            Some(v) => v.as_bool().ok_or("enableTracing: expected true or false")?,
        };
        if let Some(t) = mesh.pointer("/defaultConfig/tracing/sampling") {
            let v = t
                .as_f64()
                .ok_or("defaultConfig.tracing.sampling: expected a number")?;
            s.sampling = sampling(v, "defaultConfig.tracing.sampling")?;
        }
        let providers = mesh
            .pointer("/defaultProviders/tracing")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        if enabled && let Some(name) = providers.first() {
            let name = name
                .as_str()
                .ok_or("defaultProviders.tracing: expected provider names")?;
            let found = mesh
                .get("extensionProviders")
                .and_then(|v| v.as_array())
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
                })
                .ok_or_else(|| {
                    format!("defaultProviders.tracing: no extensionProviders entry named {name:?}")
                })?;
            let otel = found.get("opentelemetry").ok_or_else(|| {
                format!(
                    "extensionProviders[{name}]: Warden exports traces over OTLP only: expected an opentelemetry provider"
                )
            })?;
            let service = otel
                .get("service")
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    format!("extensionProviders[{name}].opentelemetry.service: expected a host")
                })?;
            let port = otel
                .get("port")
                .and_then(serde_json::Value::as_u64)
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| {
                    format!("extensionProviders[{name}].opentelemetry.port: expected a port")
                })?;
            let endpoint = format!("http://{service}:{port}");
            check_endpoint(&endpoint, &format!("extensionProviders[{name}]"))?;
            s.otlp_endpoint = Some(endpoint);
        }
        Ok(s)
    }

    /// Applies the flags over these settings.
    pub fn with_flags(mut self, f: &TelemetryFlags) -> Result<Self, String> {
        if let Some(file) = &f.access_log_file {
            self.access_log_file = (!file.is_empty()).then(|| file.clone());
        }
        if let Some(e) = &f.access_log_encoding {
            self.access_log_encoding =
                Encoding::parse(e).map_err(|err| format!("--access-log-encoding: {err}"))?;
        }
        if let Some(format) = &f.access_log_format {
            self.access_log_format = (!format.trim().is_empty()).then(|| format.clone());
        }
        if let Some(n) = f.access_log_max_bytes {
            self.access_log_max_bytes = n;
        }
        if let Some(n) = f.access_log_keep {
            self.access_log_keep = n;
        }
        if let Some(e) = &f.otlp_endpoint {
            if e.is_empty() {
                self.otlp_endpoint = None;
            } else {
                check_endpoint(e, "--tracing-otlp-endpoint")?;
                self.otlp_endpoint = Some(e.clone());
            }
        }
        if let Some(v) = f.sampling {
            self.sampling = sampling(v, "--tracing-sampling")?;
        }
        Ok(self)
    }

    /// The access log's compiled format and sink, when the log is on.
    pub fn access_log(&self) -> Result<Option<(Format, Sink)>, String> {
        let Some(file) = &self.access_log_file else {
            return Ok(None);
        };
        let format = Format::new(self.access_log_encoding, self.access_log_format.as_deref())?;
        let sink = if file == "/dev/stdout" || file == "-" {
            Sink::Stdout
        } else if file == "/dev/stderr" {
            Sink::Stderr
        } else {
            Sink::File {
                path: PathBuf::from(file),
                max_bytes: self.access_log_max_bytes,
                keep: self.access_log_keep,
            }
        };
        Ok(Some((format, sink)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mesh(yaml: &str) -> serde_json::Value {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn reads_istios_mesh_config() {
        let s = TelemetrySettings::from_mesh(&mesh(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\nenableTracing: true\ndefaultConfig:\n  tracing:\n    sampling: 100\nextensionProviders:\n- name: otel\n  opentelemetry:\n    service: collector.observability\n    port: 4317\ndefaultProviders:\n  tracing: [otel]\n",
        ))
        .unwrap();
        assert_eq!(s.access_log_file.as_deref(), Some("/dev/stdout"));
        assert_eq!(s.access_log_encoding, Encoding::Json);
        assert_eq!(s.sampling, 100.0);
        assert_eq!(
            s.otlp_endpoint.as_deref(),
            Some("http://collector.observability:4317")
        );
        let (format, sink) = s.access_log().unwrap().unwrap();
        assert!(format.is_json());
        assert_eq!(sink, Sink::Stdout);
        // Off by default, as Istio's.
        let d = TelemetrySettings::from_mesh(&mesh("{}")).unwrap();
        assert_eq!(d, TelemetrySettings::default());
        assert!(d.access_log().unwrap().is_none());
    }

    #[test]
    fn wrong_values_name_the_field() {
        for (yaml, field) in [
            ("accessLogEncoding: XML", "accessLogEncoding"),
            ("accessLogFile: 3", "accessLogFile"),
            (
                "defaultConfig: {tracing: {sampling: 200}}",
                "defaultConfig.tracing.sampling",
            ),
            (
                "defaultProviders: {tracing: [zipkin]}",
                "no extensionProviders entry named \"zipkin\"",
            ),
            (
                "extensionProviders: [{name: z, zipkin: {service: a, port: 9411}}]\ndefaultProviders: {tracing: [z]}",
                "OTLP only",
            ),
            (
                "extensionProviders: [{name: o, opentelemetry: {service: a}}]\ndefaultProviders: {tracing: [o]}",
                "opentelemetry.port",
            ),
        ] {
            let e = TelemetrySettings::from_mesh(&mesh(yaml)).unwrap_err();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        let flags = TelemetryFlags {
            otlp_endpoint: Some("https://c:4317".into()),
            ..TelemetryFlags::default()
        };
        let e = TelemetrySettings::default().with_flags(&flags).unwrap_err();
        assert!(e.contains("--tracing-otlp-endpoint"), "{e}");
    }

    #[test]
    fn flags_win() {
        let s = TelemetrySettings::from_mesh(&mesh("accessLogFile: /dev/stdout"))
            .unwrap()
            .with_flags(&TelemetryFlags {
                access_log_file: Some(String::new()),
                sampling: Some(0.5),
                otlp_endpoint: Some("http://127.0.0.1:4317".into()),
                ..TelemetryFlags::default()
            })
            .unwrap();
        assert_eq!(s.access_log_file, None);
        assert_eq!(s.sampling, 0.5);
        assert_eq!(s.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    }
}
