//! A small YAML writer for the manifests `export` produces: block style,
//! every string double-quoted (JSON escapes are valid YAML), multi-line
//! strings as literal blocks so that an embedded cluster file stays
//! readable. Writing only; nothing here parses YAML.

use serde_json::Value;

/// One YAML document for `v`, ending in a newline.
pub(crate) fn document(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => mapping(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => sequence(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

/// Several documents separated by `---`.
pub(crate) fn documents(vs: &[Value]) -> String {
    vs.iter().map(document).collect::<Vec<_>>().join("---\n")
}

fn mapping(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        push_indent(out, indent);
        out.push_str(&key(k));
        out.push(':');
        value_after_key(v, indent, out);
    }
}

fn sequence(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        push_indent(out, indent);
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first pair shares the dash's line; the rest align with it.
                let mut first = true;
                for (k, v) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        push_indent(out, indent + 2);
                    }
                    out.push_str(&key(k));
                    out.push(':');
                    value_after_key(v, indent + 2, out);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                sequence(inner, indent + 2, out);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

fn value_after_key(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(a, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.contains('\n') && !s.contains('\r') && !s.starts_with(' ') => {
            // A literal block; `|-` when there is no final newline to keep.
            let mut block = String::from(if s.ends_with('\n') { "|" } else { "|-" });
            for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
                block.push('\n');
                if !line.is_empty() {
                    block.push_str(&" ".repeat(indent));
                    block.push_str(line);
                }
            }
            block
        }
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !k.starts_with(['-', '.']);
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn push_indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists() {
        let v = json!({
            "kind": "Service",
            "metadata": {"name": "chat", "labels": {"app.kubernetes.io/name": "chat"}},
            "spec": {"ports": [{"name": "chat", "port": 5000, "protocol": "UDP"}], "clusterIP": "None"},
            "args": ["a", "b c"],
            "empty": [],
        });
        let text = document(&v);
        assert_eq!(
            text,
            "kind: \"Service\"\nmetadata:\n  name: \"chat\"\n  labels:\n    app.kubernetes.io/name: \"chat\"\nspec:\n  ports:\n  - name: \"chat\"\n    port: 5000\n    protocol: \"UDP\"\n  clusterIP: \"None\"\nargs:\n- \"a\"\n- \"b c\"\nempty: []\n"
        );
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let v = json!({"data": {"cluster.toml": "[cluster]\nname = \"x\"\n\n[[node]]\n"}});
        assert_eq!(
            document(&v),
            "data:\n  cluster.toml: |\n    [cluster]\n    name = \"x\"\n\n    [[node]]\n"
        );
    }

    #[test]
    fn awkward_strings_are_quoted() {
        let v = json!({"a": "yes", "b": "01", "c": "x: y # z", "weird key": "\"q\""});
        assert_eq!(
            document(&v),
            "a: \"yes\"\nb: \"01\"\nc: \"x: y # z\"\n\"weird key\": \"\\\"q\\\"\"\n"
        );
    }
}
