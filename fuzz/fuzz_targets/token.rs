//! The token checks: any bytes as a bearer token, a preview credential, a
//! `?token=` query and a URI to redact. Nothing may panic, nothing but a
//! token this gateway signed may verify, and a redacted URI never holds the
//! value of a `token`, `code` or `share` parameter (another parameter's
//! value may hold any text the client put there, `token=...` included: the
//! first crash this target found was that, a false alarm of its own check).
#![no_main]

use gateway::auth::{Keys, query_token, redact_uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = Keys::new(b"fuzzing-secret-0123456789", None);
    assert!(keys.verify(text).is_err());
    assert!(keys.verify_preview(text).is_none());
    assert!(!keys.is_ours(text));
    let _ = query_token(Some(text));
    if let Ok(uri) = format!("/api/x?{text}").parse::<axum::http::Uri>() {
        let redacted = redact_uri(&uri);
        let query = redacted.split_once('?').map(|(_, q)| q).unwrap_or_default();
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=')
                && ["token", "code", "share"]
                    .iter()
                    .any(|n| k.eq_ignore_ascii_case(n))
            {
                assert_eq!(v, "REDACTED", "{redacted}");
            }
        }
    }
});
