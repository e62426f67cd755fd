//! `.stagetime.yaml`: the stages a repository names for its webhook runs (pure). Its shape is a
//! RevisionRun's: `technologies` exactly as `spec.technologies` (id, kind = a template, stage,
//! canfail, path and the overrides), and an optional `concurrency` as `spec.concurrency` — one
//! parser and one set of rules for both. The file is user input read from the forge, so the
//! limits the API server enforces on a RevisionRun through its schema are checked here.

use serde::Deserialize;

use crate::crd::{ConcurrencySpec, TEMPLATE_STAGE, Technology};

/// Longest file read (bytes).
pub const MAX_BYTES: usize = 64 * 1024;

/// What the file says.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoFile {
    /// The technologies, as a RevisionRun's.
    pub technologies: Vec<Technology>,
    /// Concurrency, as a RevisionRun's.
    #[serde(default)]
    pub concurrency: Option<ConcurrencySpec>,
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses and checks the file; the error names the field.
pub fn parse(bytes: &[u8]) -> Result<RepoFile, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!(
            "the file has {} bytes; at most {MAX_BYTES} are read",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8".to_string())?;
    let file: RepoFile =
        serde_saphyr::from_str(text).map_err(|e| format!("not a stage file: {e}"))?;
    if file.technologies.is_empty() || file.technologies.len() > 100 {
        return Err(format!(
            "technologies: 1 to 100 entries, not {}",
            file.technologies.len()
        ));
    }
    for (i, t) in file.technologies.iter().enumerate() {
        let at = |field: &str| format!("technologies[{i}].{field}");
        if !dns_label(&t.id) {
            return Err(format!(
                "{}: {:?} is not a DNS-1123 label (lowercase letters, digits, '-', at most 63)",
                at("id"),
                t.id
            ));
        }
        if file.technologies[..i].iter().any(|u| u.id == t.id) {
            return Err(format!("{}: {:?} is used twice", at("id"), t.id));
        }
        if t.kind.trim().is_empty() || t.kind.len() > 253 {
            return Err(format!("{}: names no template", at("kind")));
        }
        if !(0..=TEMPLATE_STAGE).contains(&t.stage) {
            return Err(format!("{}: {} is not 0-99", at("stage"), t.stage));
        }
        if t.path.as_deref().is_some_and(|p| p.len() > 1024) {
            return Err(format!("{}: longer than 1024", at("path")));
        }
        for (field, value) in [
            ("resolver", &t.resolver),
            ("params", &t.params),
            ("listparams", &t.listparams),
            ("vclaims", &t.vclaims),
        ] {
            if value.as_deref().is_some_and(|v| v.len() > 16384) {
                return Err(format!("{}: longer than 16384", at(field)));
            }
        }
    }
    if let Some(c) = &file.concurrency {
        if let Some(group) = &c.group
            && (group.is_empty()
                || group.len() > 128
                || !group
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(format!(
                "concurrency.group: {group:?} is not 1-128 of [A-Za-z0-9._-]"
            ));
        }
        if c.max_concurrent.is_some_and(|m| !(1..=1000).contains(&m)) {
            return Err("concurrency.maxConcurrent: 1-1000".to_string());
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_parses() {
        let file = parse(
            br#"
technologies:      # exactly a RevisionRun's spec.technologies
  - {id: build-image, kind: docker, stage: 0}
  - {id: lint-yaml, kind: lint, stage: 0, canfail: true}
  - {id: unit-tests, kind: go-test, stage: 1, params: "verbose=true"}
concurrency: {group: main, policy: supersede}
"#,
        )
        .unwrap();
        assert_eq!(file.technologies.len(), 3);
        assert!(file.technologies[1].canfail);
        assert_eq!(file.technologies[2].params.as_deref(), Some("verbose=true"));
        assert_eq!(
            file.concurrency.unwrap().policy,
            Some(crate::crd::ConcurrencyPolicy::Supersede)
        );
        let defaulted = parse(b"technologies: [{id: a, kind: docker}]").unwrap();
        assert_eq!(defaulted.technologies[0].stage, TEMPLATE_STAGE);
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"technologies: []", "technologies: 1 to 100"),
            (
                b"technologies: [{id: Bad_Id, kind: x}]",
                "technologies[0].id",
            ),
            (
                b"technologies: [{id: a, kind: x}, {id: a, kind: y}]",
                "used twice",
            ),
            (
                b"technologies: [{id: a, kind: x, stage: 120}]",
                "technologies[0].stage",
            ),
            (
                b"technologies: [{id: a, kind: x, command: rm}]",
                "unknown field",
            ),
            (
                b"technologies: [{id: a, kind: x}]\nimage: evil",
                "unknown field",
            ),
            (
                b"technologies: [{id: a, kind: x}]\nconcurrency: {group: 'a b'}",
                "concurrency.group",
            ),
            (b"\xff\xfe", "UTF-8"),
            (b"technologies: {id: a}", "not a stage file"),
        ];
        for (input, expected) in cases {
            let error = parse(input).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        let huge = vec![b'#'; MAX_BYTES + 1];
        assert!(parse(&huge).unwrap_err().contains("at most 65536"));
    }
}
