//! The preview `Host` parser: any bytes as a Host header value, both host
//! styles. It must never panic, and whatever it accepts must name itself:
//! the host it answers parses back to the same preview.
#![no_main]

use gateway::preview::host::{HostStyle, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the domain, the rest the Host header.
    let (domain, host) = text.split_once('\n').unwrap_or(("localhost", text));
    for style in [HostStyle::Dotted, HostStyle::Flat] {
        if let Some(p) = parse(host, domain, style) {
            let again = p.to_host(domain, style);
            assert_eq!(parse(&again, domain, style), Some(p.clone()), "{again}");
            assert!(!p.project.is_empty() && !p.container.is_empty());
            assert_ne!(p.port, Some(0));
        }
    }
});
