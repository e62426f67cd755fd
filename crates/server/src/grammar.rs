//! The flat-string grammar of the compatibility API (docs/design.md §4.1), parsed into typed values.
//!
//! Every malformed item is reported with its field and position; nothing here can panic.
//! Items are split on `,` and trimmed; a value is everything after the first `=`, kept exactly.

use stagetime_common::{
    request::{AccessMode, Param, ParamValue, VolumeClaimTemplate, Workspace, WorkspaceKind},
    validate::is_quantity,
};

/// A grammar error: which item of the field is wrong and why (the caller adds the field path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemError {
    /// 1-based position of the item.
    pub item: usize,
    /// The item text.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

impl std::error::Error for ItemError {}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // At most 64 characters of the item: a megabyte-long item is not echoed back.
        let text = match self.text.char_indices().nth(64) {
            Some((end, _)) => format!("{}…", &self.text[..end]),
            None => self.text.clone(),
        };
        write!(f, "item {} {text:?}: {}", self.item, self.reason)
    }
}

/// Splits `k=v, k2=v2` into trimmed `(key, value)` pairs; empty input gives no pairs.
pub fn key_values(raw: &str) -> Result<Vec<(String, String)>, ItemError> {
    let mut out = Vec::new();
    // A set, not a scan of `out`: a megabyte of `a=,b=,…` must stay linear.
    let mut seen = std::collections::HashSet::new();
    if raw.trim().is_empty() {
        return Ok(out);
    }
    for (i, item) in raw.split(',').enumerate() {
        let text = item.trim();
        let err = |reason: &str| ItemError {
            item: i + 1,
            text: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(err("empty item (stray comma?)"));
        }
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| err("expected key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(err("empty key"));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(err(
                "key may only contain letters, digits, '-', '_' and '.'",
            ));
        }
        if !seen.insert(key) {
            return Err(err("duplicate key"));
        }
        out.push((key.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// `params` / `resolverParams`: `k=v, k2=v2` → string params.
pub fn params(raw: &str) -> Result<Vec<Param>, ItemError> {
    Ok(key_values(raw)?
        .into_iter()
        .map(|(name, value)| Param {
            name,
            value: ParamValue::String(value),
        })
        .collect())
}

/// `listparams`: `k=a;b;c, k2=x;y` → array params.
pub fn list_params(raw: &str) -> Result<Vec<Param>, ItemError> {
    Ok(key_values(raw)?
        .into_iter()
        .map(|(name, value)| Param {
            name,
            value: ParamValue::Array(value.split(';').map(|v| v.trim().to_string()).collect()),
        })
        .collect())
}

/// `workspaces`: `name=kind;ref;refKey`, e.g. `ssh=secret;codehub-ssh;secretName`.
pub fn workspaces(raw: &str) -> Result<Vec<Workspace>, ItemError> {
    let pairs = key_values(raw)?;
    let mut out = Vec::new();
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        let err = |reason: String| ItemError {
            item: i + 1,
            text: format!("{name}={value}"),
            reason,
        };
        let parts: Vec<&str> = value.split(';').map(str::trim).collect();
        let kind: WorkspaceKind = parts
            .first()
            .copied()
            .unwrap_or_default()
            .parse()
            .map_err(err)?;
        let Some(expected) = kind.ref_key() else {
            out.push(Workspace {
                name,
                kind,
                reference: String::new(),
            });
            continue;
        };
        let [_, reference, ref_key] = parts.as_slice() else {
            return Err(err("expected kind;ref;refKey".into()));
        };
        if reference.is_empty() {
            return Err(err("empty ref".into()));
        }
        if *ref_key != expected {
            return Err(err(format!(
                "refKey of {} must be {expected}, got {ref_key:?}",
                kind.as_str()
            )));
        }
        out.push(Workspace {
            name,
            kind,
            reference: (*reference).to_string(),
        });
    }
    Ok(out)
}

/// `volumeClaimTemplates`: `name=storageClass;accessMode;size`.
pub fn volume_claim_templates(raw: &str) -> Result<Vec<VolumeClaimTemplate>, ItemError> {
    let pairs = key_values(raw)?;
    let mut out = Vec::new();
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        let err = |reason: &str| ItemError {
            item: i + 1,
            text: format!("{name}={value}"),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = value.split(';').map(str::trim).collect();
        let [storage_class, access_mode, size] = parts.as_slice() else {
            return Err(err("expected storageClass;accessMode;size"));
        };
        let access_mode: AccessMode = access_mode.parse().map_err(|e: String| err(&e))?;
        if !is_quantity(size) {
            return Err(err(
                "size must be a Kubernetes quantity such as 1Gi or 500M",
            ));
        }
        out.push(VolumeClaimTemplate {
            name,
            storage_class: (*storage_class).to_string(),
            access_mode,
            size: (*size).to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn params_keep_values_exactly() {
        let p = params("flag=true, list=a;b, eq=x=y, uni=grüße <&>").unwrap_or_default();
        let values: Vec<(&str, &ParamValue)> =
            p.iter().map(|p| (p.name.as_str(), &p.value)).collect();
        assert_eq!(
            values,
            vec![
                ("flag", &ParamValue::String("true".into())),
                ("list", &ParamValue::String("a;b".into())),
                ("eq", &ParamValue::String("x=y".into())),
                ("uni", &ParamValue::String("grüße <&>".into())),
            ]
        );
    }

    #[test]
    fn list_params_split_on_semicolons() {
        let p = list_params("tags=a;b;c, one=x").unwrap_or_default();
        assert_eq!(
            p[0].value,
            ParamValue::Array(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(p[1].value, ParamValue::Array(vec!["x".into()]));
    }

    #[test]
    fn malformed_items_name_their_position() {
        let e = params("a=1, broken").err();
        assert_eq!(e.map(|e| (e.item, e.text)), Some((2, "broken".to_string())));
        assert!(params("a=1,,b=2").is_err());
        assert!(params("=v").is_err());
        assert!(params("a=1, a=2").is_err());
        assert!(params("").map(|p| p.is_empty()).unwrap_or(false));
    }

    #[test]
    fn workspaces_and_claims() {
        let ws = workspaces(
            "ssh=secret;codehub-ssh;secretName, cache=persistentVolumeClaim;build-cache;claimName",
        )
        .unwrap_or_default();
        assert_eq!(ws.len(), 2);
        assert_eq!(ws[0].reference, "codehub-ssh");
        assert_eq!(ws[1].kind, WorkspaceKind::PersistentVolumeClaim);
        assert!(workspaces("ssh=secret;codehub-ssh;claimName").is_err());
        assert!(workspaces("ssh=vault;x;y").is_err());
        assert!(workspaces("ssh=secret;x").is_err());
        let vct = volume_claim_templates("shared=openebs-hostpath;ReadWriteOnce;20Mi")
            .unwrap_or_default();
        assert_eq!(vct[0].size, "20Mi");
        assert!(volume_claim_templates("shared=sc;ReadWriteOnce;lots").is_err());
        assert!(volume_claim_templates("shared=sc;Sometimes;1Gi").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(raw in ".{0,200}") {
            let _ = params(&raw);
            let _ = list_params(&raw);
            let _ = workspaces(&raw);
            let _ = volume_claim_templates(&raw);
        }

        #[test]
        fn well_formed_params_round_trip(pairs in proptest::collection::btree_map("[a-z][a-z0-9_]{0,8}", "[^,]{0,20}", 0..6)) {
            let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let parsed = params(&raw.join(", ")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.len(), pairs.len());
            for (p, (k, v)) in parsed.iter().zip(pairs.iter()) {
                prop_assert_eq!(&p.name, k);
                prop_assert_eq!(&p.value, &ParamValue::String(v.trim().to_string()));
            }
        }
    }
}
