//! The smallest set of RedisJSON writes that turns one document into another: a state change of
//! one run in a revision run of 500 runs writes a few fields, not the whole document.

use serde_json::Value;

/// One write at a JSONPath (`$.stages[0].runs[3].state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `JSON.SET key path json`.
    Set(String, String),
    /// `JSON.DEL key path` (a field that became absent, e.g. an `Option` set back to `None`).
    Del(String),
}

/// Beyond this many writes one write of the whole document is cheaper.
pub const MAX_OPS: usize = 32;

/// The writes from `old` to `new`, or a single `Set("$", new)` when that is smaller.
pub fn diff(old: &Value, new: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut path = String::from("$");
    walk(&mut path, old, new, &mut ops);
    if ops.len() > MAX_OPS {
        return vec![Op::Set("$".into(), new.to_string())];
    }
    ops
}

fn walk(path: &mut String, old: &Value, new: &Value, ops: &mut Vec<Op>) {
    if old == new {
        return;
    }
    let mark = path.len();
    match (old, new) {
        (Value::Object(a), Value::Object(b)) if b.keys().all(|k| is_plain_key(k)) => {
            for (key, value) in b {
                path.push('.');
                path.push_str(key);
                match a.get(key) {
                    Some(before) => walk(path, before, value, ops),
                    None => ops.push(Op::Set(path.clone(), value.to_string())),
                }
                path.truncate(mark);
            }
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                if !is_plain_key(key) {
                    ops.push(Op::Set(path.clone(), new.to_string()));
                    return;
                }
                ops.push(Op::Del(format!("{path}.{key}")));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (before, after)) in a.iter().zip(b).enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(path, before, after, ops);
                path.truncate(mark);
            }
        }
        _ => ops.push(Op::Set(path.clone(), new.to_string())),
    }
}

/// Keys that can be written in dotted JSONPath without quoting (ours are camelCase names).
fn is_plain_key(key: &str) -> bool {
    key.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Applies ops to a document the way RedisJSON does, for the round-trip property.
    fn apply(doc: &mut Value, ops: &[Op]) {
        for op in ops {
            let (path, value) = match op {
                Op::Set(p, v) => (p, Some(serde_json::from_str(v).unwrap_or(Value::Null))),
                Op::Del(p) => (p, None),
            };
            let mut parts: Vec<String> = Vec::new();
            for seg in path
                .trim_start_matches('$')
                .split('.')
                .filter(|s| !s.is_empty())
            {
                let (name, idx) = seg
                    .split_once('[')
                    .map_or((seg, None), |(n, i)| (n, Some(i)));
                if !name.is_empty() {
                    parts.push(format!("/{name}"));
                }
                for i in idx.into_iter().flat_map(|i| i.split('[')) {
                    parts.push(format!("/{}", i.trim_end_matches(']')));
                }
            }
            let pointer: String = parts.concat();
            match value {
                Some(v) if pointer.is_empty() => *doc = v,
                Some(v) => {
                    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", ""));
                    match doc.pointer_mut(parent) {
                        Some(Value::Object(m)) => {
                            m.insert(key.to_string(), v);
                        }
                        Some(Value::Array(a)) => {
                            if let Ok(i) = key.parse::<usize>() {
                                a[i] = v;
                            }
                        }
                        _ => {}
                    }
                }
                None => {
                    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", ""));
                    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
                        m.remove(key);
                    }
                }
            }
        }
    }

    fn sorted(mut ops: Vec<Op>) -> Vec<String> {
        let mut out: Vec<String> = ops.drain(..).map(|o| format!("{o:?}")).collect();
        out.sort();
        out
    }

    #[test]
    fn one_run_change_is_a_few_small_writes() {
        let old = json!({"version": 3, "stages": [{"runs": [{"state": "Running"}, {"state": "Created"}]}]});
        let new = json!({"version": 4, "stages": [{"runs": [{"state": "Running"}, {"state": "Failed", "reason": "Deleted"}]}]});
        assert_eq!(
            sorted(diff(&old, &new)),
            sorted(vec![
                Op::Set("$.version".into(), "4".into()),
                Op::Set("$.stages[0].runs[1].state".into(), "\"Failed\"".into()),
                Op::Set("$.stages[0].runs[1].reason".into(), "\"Deleted\"".into()),
            ])
        );
        assert_eq!(diff(&old, &old), vec![]);
    }

    #[test]
    fn removed_fields_resized_arrays_and_big_changes() {
        let old = json!({"a": {"x": 1, "y": 2}, "list": [1, 2]});
        let new = json!({"a": {"x": 1}, "list": [1, 2, 3]});
        assert_eq!(
            sorted(diff(&old, &new)),
            sorted(vec![
                Op::Set("$.list".into(), "[1,2,3]".into()),
                Op::Del("$.a.y".into()),
            ])
        );
        let many_old = json!({"v": (0..100).collect::<Vec<_>>()});
        let many_new = json!({"v": (1..101).collect::<Vec<_>>()});
        assert_eq!(
            diff(&many_old, &many_new),
            vec![Op::Set("$".into(), many_new.to_string())]
        );
    }

    proptest::proptest! {
        #[test]
        fn applying_the_diff_gives_the_new_document(
            a in proptest::collection::vec(0u8..4, 0..6),
            b in proptest::collection::vec(0u8..4, 0..6),
            flag in proptest::bool::ANY,
        ) {
            let doc = |v: &[u8], f: bool| {
                let mut o = json!({"runs": v.iter().map(|x| json!({"state": x})).collect::<Vec<_>>()});
                if f { o["reason"] = json!("r"); }
                o
            };
            let (old, new) = (doc(&a, flag), doc(&b, !flag));
            let mut patched = old.clone();
            apply(&mut patched, &diff(&old, &new));
            proptest::prop_assert_eq!(patched, new);
        }
    }
}
