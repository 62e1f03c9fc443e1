//! Preview hostnames: which project, container and port a `Host` header names.
//!
//! In the `dotted` style a preview host is `{container}.{project}.{domain}`
//! (the container's declared port) or `{port}-{container}.{project}.{domain}`
//! (another port it declared). In the `flat` style it is one label,
//! `{container}--{project}.{domain}` or `{port}-{container}--{project}.{domain}`,
//! so that one wildcard certificate (`*.{domain}`) covers every preview; the
//! label splits at the first `--`, so a container name holding `--` has no
//! flat host (creating one is refused). Any `:port` suffix of the Host header
//! is ignored. Matching is case-insensitive, as DNS is. This module is pure so
//! it can be tested as a table, like coder's `coderd/workspaceapps/appurl`.

pub use crate::config::HostStyle;
use crate::ids::is_dns_label;

/// What a preview host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewHost {
    /// Project id (a DNS label).
    pub project: String,
    /// Container name (a DNS label).
    pub container: String,
    /// A port other than the container's declared one, from the
    /// `{port}-{container}` form.
    pub port: Option<u16>,
}

/// The longest DNS label (RFC 1035): a flat host's one label must fit.
pub const MAX_LABEL: usize = 63;

impl PreviewHost {
    /// The host name (without any port) that names this preview under `domain`.
    pub fn to_host(&self, domain: &str, style: HostStyle) -> String {
        let domain = normalize_domain(domain);
        let port = self.port.map(|p| format!("{p}-")).unwrap_or_default();
        match style {
            HostStyle::Dotted => format!("{port}{}.{}.{domain}", self.container, self.project),
            HostStyle::Flat => format!("{port}{}--{}.{domain}", self.container, self.project),
        }
    }
}

/// Why a container cannot have a preview host in `style`, if it cannot: a
/// flat label splits at its first `--` and holds at most 63 characters
/// (with room for a `{port}-` prefix of 6).
pub fn flat_host_problem(container: &str, project: &str, style: HostStyle) -> Option<String> {
    if style != HostStyle::Flat {
        return None;
    }
    if container.contains("--") {
        return Some(format!(
            "container name {container:?} holds \"--\", which flat preview hosts use to separate it from the project"
        ));
    }
    let len = container.len() + 2 + project.len() + "65535-".len();
    (len > MAX_LABEL).then(|| {
        format!(
            "container and project names together are too long for a flat preview host (at most {} characters)",
            MAX_LABEL - 2 - "65535-".len()
        )
    })
}

/// Parses a `Host` header value against the preview `domain`. `None` means the
/// host is not a preview host (the API or the demo page live there instead).
pub fn parse(host: &str, domain: &str, style: HostStyle) -> Option<PreviewHost> {
    let name = strip_port(host.trim())?;
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let domain = normalize_domain(domain);
    if domain.is_empty() {
        return None;
    }
    let prefix = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
    let (first, project) = match style {
        // Exactly two labels in front of the domain: `{first}.{project}`.
        HostStyle::Dotted => prefix.split_once('.')?,
        // One label: `{first}--{project}`.
        HostStyle::Flat => {
            if prefix.contains('.') || prefix.len() > MAX_LABEL {
                return None;
            }
            prefix.split_once("--")?
        }
    };
    if project.contains('.') || !is_dns_label(project) {
        return None;
    }
    let (port, container) = split_port(first)?;
    if !is_dns_label(container) {
        return None;
    }
    Some(PreviewHost {
        project: project.to_owned(),
        container: container.to_owned(),
        port,
    })
}

fn normalize_domain(domain: &str) -> String {
    let d = domain.trim().trim_start_matches('.');
    d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()
}

/// Drops a `:port` suffix. An IPv6 literal (`[::1]:8080`) is never a preview
/// host, so it gives `None`.
fn strip_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) => {
            Some(name)
        }
        Some(_) => None,
        None => Some(host),
    }
}

/// Splits `{port}-{container}`; a label without a leading number is the
/// container alone. Container names start with a letter, so the two forms
/// cannot be confused.
fn split_port(label: &str) -> Option<(Option<u16>, &str)> {
    let digits = label.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Some((None, label));
    }
    let container = label[digits..].strip_prefix('-')?;
    let number = &label[..digits];
    // One spelling per port: no leading zeros, no port 0.
    if number.starts_with('0') {
        return None;
    }
    let port: u16 = number.parse().ok()?;
    Some((Some(port), container))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(container: &str, project: &str, port: Option<u16>) -> Option<PreviewHost> {
        Some(PreviewHost {
            project: project.into(),
            container: container.into(),
            port,
        })
    }

    #[test]
    fn parse_table() {
        let cases: &[(&str, &str, Option<PreviewHost>)] = &[
            // The two forms, with and without a port in the Host header.
            ("web.demo.localhost", "localhost", ph("web", "demo", None)),
            (
                "web.demo.localhost:8080",
                "localhost",
                ph("web", "demo", None),
            ),
            (
                "3000-web.demo.localhost",
                "localhost",
                ph("web", "demo", Some(3000)),
            ),
            (
                "3000-web.demo.localhost:80",
                "localhost",
                ph("web", "demo", Some(3000)),
            ),
            (
                "65535-web.demo.localhost",
                "localhost",
                ph("web", "demo", Some(65535)),
            ),
            // Case-insensitive, a trailing dot is the same name.
            ("WEB.Demo.LocalHost", "localhost", ph("web", "demo", None)),
            ("web.demo.localhost.", "localhost", ph("web", "demo", None)),
            (
                "web.demo.localhost.:9000",
                "localhost",
                ph("web", "demo", None),
            ),
            // Multi-label domains, given in any case or with dots around.
            (
                "web.demo.preview.example.com",
                "preview.example.com",
                ph("web", "demo", None),
            ),
            (
                "web.demo.preview.example.com",
                "Preview.Example.COM.",
                ph("web", "demo", None),
            ),
            (
                "web.demo.preview.example.com",
                ".preview.example.com",
                ph("web", "demo", None),
            ),
            // Hyphens and digits inside labels.
            (
                "my-app2.proj-1.localhost",
                "localhost",
                ph("my-app2", "proj-1", None),
            ),
            (
                "8080-my-app.p.localhost",
                "localhost",
                ph("my-app", "p", Some(8080)),
            ),
            // Longest labels (40 characters).
            (
                "a234567890123456789012345678901234567890.b234567890123456789012345678901234567890.localhost",
                "localhost",
                ph(
                    "a234567890123456789012345678901234567890",
                    "b234567890123456789012345678901234567890",
                    None,
                ),
            ),
            // Not preview hosts: the bare domain, one label, three labels.
            ("localhost", "localhost", None),
            ("localhost:8080", "localhost", None),
            ("demo.localhost", "localhost", None),
            ("a.web.demo.localhost", "localhost", None),
            // Another domain, or the domain only as a suffix of a label.
            ("web.demo.example.com", "localhost", None),
            ("web.demolocalhost", "localhost", None),
            ("web.demo.notlocalhost", "localhost", None),
            // Labels that are not DNS labels of the contract.
            ("Web_1.demo.localhost", "localhost", None),
            ("-web.demo.localhost", "localhost", None),
            ("web-.demo.localhost", "localhost", None),
            ("web.1demo.localhost", "localhost", None),
            ("web..localhost", "localhost", None),
            (".demo.localhost", "localhost", None),
            (
                "a2345678901234567890123456789012345678901.demo.localhost",
                "localhost",
                None,
            ),
            // Bad ports in the first label.
            ("0-web.demo.localhost", "localhost", None),
            ("03000-web.demo.localhost", "localhost", None),
            ("65536-web.demo.localhost", "localhost", None),
            ("99999999999-web.demo.localhost", "localhost", None),
            ("3000web.demo.localhost", "localhost", None),
            ("3000-.demo.localhost", "localhost", None),
            ("3000--web.demo.localhost", "localhost", None),
            ("3000.demo.localhost", "localhost", None),
            // Bad Host header port syntax, IP literals, empty input.
            ("web.demo.localhost:", "localhost", None),
            ("web.demo.localhost:abc", "localhost", None),
            ("[::1]:8080", "localhost", None),
            ("127.0.0.1:8080", "localhost", None),
            ("", "localhost", None),
            ("web.demo.localhost", "", None),
        ];
        for (host, domain, want) in cases {
            assert_eq!(
                &parse(host, domain, HostStyle::Dotted),
                want,
                "host {host:?} domain {domain:?}"
            );
        }
    }

    #[test]
    fn parse_flat_table() {
        let cases: &[(&str, Option<PreviewHost>)] = &[
            ("web--demo.localhost", ph("web", "demo", None)),
            ("web--demo.localhost:8080", ph("web", "demo", None)),
            ("3000-web--demo.localhost", ph("web", "demo", Some(3000))),
            ("WEB--Demo.LOCALHOST.", ph("web", "demo", None)),
            ("my-app--proj-1.localhost", ph("my-app", "proj-1", None)),
            // Splits at the first `--`: the project may hold one, the container not.
            ("web--my--proj.localhost", ph("web", "my--proj", None)),
            // Not flat preview hosts.
            ("web.demo.localhost", None),
            ("webdemo.localhost", None),
            ("--demo.localhost", None),
            ("web--.localhost", None),
            ("web---demo.localhost", None),
            ("0-web--demo.localhost", None),
            ("3000-web--demo.x.localhost", None),
            ("web--demo", None),
            ("localhost", None),
        ];
        for (host, want) in cases {
            assert_eq!(
                &parse(host, "localhost", HostStyle::Flat),
                want,
                "host {host:?}"
            );
        }
        // A label longer than DNS allows is no host at all.
        let long = format!("{}--{}.localhost", "a".repeat(30), "b".repeat(34));
        assert_eq!(parse(&long, "localhost", HostStyle::Flat), None);
    }

    #[test]
    fn flat_host_limits() {
        assert_eq!(flat_host_problem("web", "demo", HostStyle::Flat), None);
        assert!(flat_host_problem("a--b", "demo", HostStyle::Flat).is_some());
        assert!(flat_host_problem("a--b", "demo", HostStyle::Dotted).is_none());
        let (c, p) = ("c".repeat(27), "p".repeat(28));
        assert!(flat_host_problem(&c, &p, HostStyle::Flat).is_none());
        assert!(flat_host_problem(&c, &format!("{p}p"), HostStyle::Flat).is_some());
    }

    #[test]
    fn to_host_round_trips() {
        for (host, domain) in [
            ("web.demo.localhost", "localhost"),
            ("3000-web.demo.localhost", "localhost"),
            ("web.demo.preview.example.com", "Preview.Example.com"),
        ] {
            let parsed = parse(host, domain, HostStyle::Dotted).expect("a preview host");
            assert_eq!(parsed.to_host(domain, HostStyle::Dotted), host);
        }
        for host in ["web--demo.localhost", "3000-web--demo.localhost"] {
            let parsed = parse(host, "localhost", HostStyle::Flat).expect("a flat host");
            assert_eq!(parsed.to_host("localhost", HostStyle::Flat), host);
        }
    }
}
