//! Kubernetes name and label helpers: DNS-1123 labels and label values, truncated with a hash so
//! that distinct inputs stay distinct.

use sha2::{Digest, Sha256};

/// The token PipelineRun `pipeline_run` of a revision run with secret `secret` carries (see
/// `RevisionRun::run_token`).
pub fn run_token(secret: &str, pipeline_run: &str) -> String {
    short_hash(format!("{secret}/{pipeline_run}").as_bytes(), 16)
}

/// The first `bytes` bytes of the SHA-256 of `data`, as lowercase hex (`2 × bytes` digits).
pub fn short_hash(data: &[u8], bytes: usize) -> String {
    hex(&Sha256::digest(data)[..bytes.min(32)])
}

/// `bytes` random bytes from the operating system, as lowercase hex; for tokens that must not be
/// guessable (never for names, which must be deterministic).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source failing is not recoverable for a server; fall back to a hash of the
    // time so a token is still unique, and say so.
    if let Err(error) = getrandom::fill(&mut buf) {
        tracing::error!(%error, "OS random source failed; token falls back to a time hash");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        return short_hash(&now.to_le_bytes(), bytes);
    }
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Suffix of every PipelineRun name of a revision run: 10 hex digits (40 bits) of a hash of its
/// id, so names of different revision runs practically never collide.
pub fn name_suffix(id: &str) -> String {
    short_hash(id.as_bytes(), 5)
}

/// The PipelineRun name of run `name` in `stage` of revision run `id`, attempt `attempt`:
/// `st-<stage>-<name>-<suffix>`, with `-a<attempt>` from the second attempt on; always a DNS-1123
/// label of at most 63 characters.
pub fn pipeline_run_name(stage: u32, name: &str, id: &str, attempt: u32) -> String {
    let suffix = name_suffix(id);
    let stage = stage.to_string();
    if attempt <= 1 {
        dns_label(&["st", &stage, name, &suffix])
    } else {
        dns_label(&["st", &stage, name, &suffix, &format!("a{attempt}")])
    }
}

/// Maps arbitrary text to label-value syntax (`[A-Za-z0-9._-]`, alphanumeric at both ends),
/// at most `max` characters. Other characters become `-`.
pub fn sanitize_label(raw: &str, max: usize) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let truncated: String = mapped.chars().take(max).collect();
    truncated
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// A DNS-1123 label (`[a-z0-9-]`, ≤ 63 chars, alphanumeric at both ends) built from `parts`
/// joined by `-`. When the joined name is too long it is cut and a 6-hex-digit hash of the full
/// name is appended, so the result is still deterministic and unique per input.
pub fn dns_label(parts: &[&str]) -> String {
    const MAX: usize = 63;
    let joined = parts.join("-");
    let mut clean: String = joined
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while clean.contains("--") {
        clean = clean.replace("--", "-");
    }
    let clean = clean.trim_matches('-').to_string();
    if !clean.is_empty() && clean.len() <= MAX {
        return clean;
    }
    let hash = short_hash(joined.as_bytes(), 3);
    let head: String = clean.chars().take(MAX - hash.len() - 1).collect();
    let head = head.trim_end_matches('-');
    if head.is_empty() {
        format!("x-{hash}")
    } else {
        format!("{head}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(dns_label(&["st", "0", "build", "abc"]), "st-0-build-abc");
        assert_eq!(dns_label(&["st", "1", "Build_Image"]), "st-1-build-image");
    }

    #[test]
    fn long_names_are_cut_with_a_hash() {
        let long = "x".repeat(100);
        let a = dns_label(&["st", "0", &long, "a"]);
        let b = dns_label(&["st", "0", &long, "b"]);
        assert!(is_dns_label(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(a.len(), 63);
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(
            sanitize_label("stuttgart-things/app", 63),
            "stuttgart-things-app"
        );
        assert_eq!(sanitize_label("__x__", 63), "x");
        assert_eq!(
            sanitize_label("2024-01-01T10:00:00Z", 63),
            "2024-01-01T10-00-00Z"
        );
    }

    #[test]
    fn attempts_get_their_own_names() {
        let first = pipeline_run_name(1, "deploy", "repo-abc-1", 1);
        let second = pipeline_run_name(1, "deploy", "repo-abc-1", 2);
        assert!(
            second.ends_with("-a2") && second.starts_with("st-1-deploy-"),
            "{second}"
        );
        assert_ne!(first, second);
        let long = pipeline_run_name(1, &"x".repeat(80), "repo-abc-1", 12);
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            pipeline_run_name(1, &"x".repeat(80), "repo-abc-1", 13)
        );
    }

    #[test]
    fn hashes_and_tokens() {
        assert_eq!(short_hash(b"abc", 4), "ba7816bf");
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn dns_label_is_always_valid(parts in proptest::collection::vec(".{0,40}", 1..5)) {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let name = dns_label(&refs);
            prop_assert!(is_dns_label(&name), "{name:?}");
            prop_assert_eq!(name.clone(), dns_label(&refs));
        }

        #[test]
        fn label_value_is_always_valid(raw in ".{0,100}") {
            let v = sanitize_label(&raw, 63);
            prop_assert!(v.len() <= 63);
            prop_assert!(v.is_empty() || (v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())));
        }
    }
}
