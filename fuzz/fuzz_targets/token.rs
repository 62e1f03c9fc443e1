//! The token checks: any bytes as a bearer token, a preview credential, a
//! `?token=` query and a URI to redact. Nothing may panic, nothing but a
//! token this gateway signed may verify, and a redacted URI never holds the
//! token it redacts.
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
        if let Some(token) = query_token(uri.query()).filter(|t| t.len() > 8) {
            assert!(!redacted.contains(&format!("token={token}")), "{redacted}");
        }
    }
});
