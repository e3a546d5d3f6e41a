//! The apiserver's admission of our kinds, offline: the CRDs' structural schemas (with their
//! defaults applied first, as the apiserver does) and their CEL rules
//! (`x-kubernetes-validations`), evaluated with the Kubernetes functions they use. Unknown
//! fields are errors, as with `kubectl apply`'s strict field validation.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use cel::{Context, Program, Value as Cel, extractors::This};
use serde_json::{Map, Value};

/// The schema of each of our kinds, by kind, with the `apiVersion` it is served at.
pub struct Schemas {
    kinds: BTreeMap<String, (String, Value)>,
}

/// One refusal: where (a field path) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub path: String,
    pub message: String,
}

impl Schemas {
    pub fn ours() -> Schemas {
        let kinds = portcullis_api::crds()
            .into_iter()
            .map(|(_, crd)| {
                let v = &crd.spec.versions[0];
                let schema = v
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .map(|s| serde_json::to_value(s).expect("a schema serializes"))
                    .unwrap_or(Value::Null);
                (
                    crd.spec.names.kind.clone(),
                    (format!("{}/{}", crd.spec.group, v.name), schema),
                )
            })
            .collect();
        Schemas { kinds }
    }

    /// Checks `obj` as the apiserver would admit it, and returns it with the schema's
    /// defaults applied (what the operator would read back).
    pub fn admit(&self, obj: &Value) -> (Value, Vec<Refusal>) {
        let mut out = Vec::new();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let Some((api_version, schema)) = self.kinds.get(kind) else {
            out.push(Refusal {
                path: "kind".into(),
                message: format!("{kind:?} is not a portcullis.dev kind"),
            });
            return (obj.clone(), out);
        };
        if obj["apiVersion"].as_str() != Some(api_version) {
            out.push(Refusal {
                path: "apiVersion".into(),
                message: format!(
                    "{kind} is served as {api_version}, not {}",
                    obj["apiVersion"]
                ),
            });
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if !is_dns_subdomain(name) {
            out.push(Refusal {
                path: "metadata.name".into(),
                message: format!("{name:?} is not a DNS subdomain name"),
            });
        }
        let mut obj = obj.clone();
        default(schema, &mut obj);
        let mut checker = Checker {
            ctx: cel_context(),
            out,
        };
        checker.check(schema, &obj, "", true);
        (obj, checker.out)
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Applies the schema's `default`s to absent fields, depth first, as the apiserver does on
/// admission.
fn default(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if !o.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        o.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = o.get_mut(k) {
                        default(s, child);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                o.values_mut().for_each(|c| default(s, c));
            }
        }
        Value::Array(a) => {
            if let Some(s) = schema.get("items") {
                a.iter_mut().for_each(|c| default(s, c));
            }
        }
        _ => {}
    }
}

struct Checker {
    ctx: Context<'static, 'static>,
    out: Vec<Refusal>,
}

impl Checker {
    fn refuse(&mut self, path: &str, message: String) {
        self.out.push(Refusal {
            path: path.trim_start_matches('.').to_owned(),
            message,
        });
    }

    fn check(&mut self, s: &Value, v: &Value, path: &str, root: bool) {
        if v.is_null() {
            if !s["nullable"].as_bool().unwrap_or(false) && !root {
                // The apiserver drops a null for a non-nullable field with a default, and
                // refuses it otherwise; either way the field is not what the author meant.
                self.refuse(path, "must not be null".into());
            }
            return;
        }
        let int_or_string = s["x-kubernetes-int-or-string"].as_bool().unwrap_or(false);
        let ty = s["type"].as_str().unwrap_or("");
        let type_ok = match (ty, v) {
            _ if int_or_string => v.is_i64() || v.is_u64() || v.is_string(),
            ("", _) => true,
            ("object", Value::Object(_)) | ("array", Value::Array(_)) => true,
            ("string", Value::String(_)) | ("boolean", Value::Bool(_)) => true,
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
            ("number", Value::Number(_)) => true,
            _ => false,
        };
        if !type_ok {
            self.refuse(path, format!("must be of type {ty}, not {}", type_name(v)));
            return;
        }
        if let Some(e) = s["enum"].as_array()
            && !e.contains(v)
        {
            let allowed: Vec<String> = e.iter().map(Value::to_string).collect();
            self.refuse(
                path,
                format!(
                    "{v} is not one of the allowed values: {}",
                    allowed.join(", ")
                ),
            );
        }
        match v {
            Value::Object(o) => self.object(s, o, path, root),
            Value::Array(a) => {
                let n = a.len() as u64;
                if let Some(min) = s["minItems"].as_u64().filter(|m| n < *m) {
                    self.refuse(path, format!("must have at least {min} items"));
                }
                if let Some(max) = s["maxItems"].as_u64().filter(|m| n > *m) {
                    self.refuse(path, format!("must have at most {max} items"));
                }
                for (i, item) in a.iter().enumerate() {
                    self.check(&s["items"], item, &format!("{path}[{i}]"), false);
                }
            }
            Value::String(t) => {
                let n = t.chars().count() as u64;
                if let Some(min) = s["minLength"].as_u64().filter(|m| n < *m) {
                    self.refuse(path, format!("must be at least {min} characters long"));
                }
                if let Some(max) = s["maxLength"].as_u64().filter(|m| n > *m) {
                    self.refuse(path, format!("must be at most {max} characters long"));
                }
                if let Some(p) = s["pattern"].as_str()
                    && !regex_matches(p, t)
                {
                    self.refuse(path, format!("{t:?} does not match the pattern {p}"));
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                if let Some(min) = s["minimum"].as_f64() {
                    let exclusive = s["exclusiveMinimum"].as_bool().unwrap_or(false);
                    if x < min || (exclusive && x == min) {
                        self.refuse(path, format!("must be at least {min}, not {n}"));
                    }
                }
                if let Some(max) = s["maximum"].as_f64() {
                    let exclusive = s["exclusiveMaximum"].as_bool().unwrap_or(false);
                    if x > max || (exclusive && x == max) {
                        self.refuse(path, format!("must be at most {max}, not {n}"));
                    }
                }
            }
            _ => {}
        }
        if let Some(rules) = s["x-kubernetes-validations"].as_array() {
            for r in rules {
                self.rule(r, v, path);
            }
        }
    }

    fn object(&mut self, s: &Value, o: &Map<String, Value>, path: &str, root: bool) {
        for r in s["required"].as_array().into_iter().flatten() {
            if let Some(r) = r.as_str()
                && !o.contains_key(r)
            {
                self.refuse(&format!("{path}.{r}"), "is required".into());
            }
        }
        let props = s["properties"].as_object();
        let open = s["x-kubernetes-preserve-unknown-fields"]
            .as_bool()
            .unwrap_or(false);
        for (k, child) in o {
            let at = format!("{path}.{k}");
            if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(cs), _) => self.check(cs, child, &at, false),
                (None, Some(ap)) if ap.is_object() => self.check(ap, child, &at, false),
                (None, Some(Value::Bool(true))) => {}
                _ if open => {}
                _ => self.refuse(&at, "is not a field of this kind (unknown field)".into()),
            }
        }
    }

    /// One CEL rule with `self` bound to `v`. A rule on `oldSelf` (a transition rule) only
    /// applies to updates, so it is not evaluated here.
    fn rule(&mut self, r: &Value, v: &Value, path: &str) {
        let Some(rule) = r["rule"].as_str() else {
            return;
        };
        if rule.contains("oldSelf") {
            return;
        }
        let at = match r["fieldPath"].as_str() {
            Some(f) => format!("{path}{f}"),
            None => path.to_owned(),
        };
        let message = r["message"]
            .as_str()
            .map_or_else(|| format!("failed rule: {rule}"), str::to_owned);
        let outcome = Program::compile(rule)
            .map_err(|e| format!("the rule {rule:?} does not compile: {e}"))
            .and_then(|p| {
                let mut ctx = self.ctx.new_inner_scope();
                ctx.add_variable_from_value("self", to_cel(v));
                p.execute(&ctx)
                    .map_err(|e| format!("the rule {rule:?} could not be evaluated: {e}"))
            });
        match outcome {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => self.refuse(&at, message),
            Ok(other) => self.refuse(&at, format!("the rule {rule:?} gave {other:?}, not a bool")),
            Err(e) => self.refuse(&at, e),
        }
    }
}

/// A JSON value as Kubernetes CEL sees it: every integer an `int` (never a `uint`), so that
/// `self.max - self.min + 1` type-checks as it does in the apiserver.
fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => Cel::Map(cel::objects::Map {
            map: Arc::new(
                o.iter()
                    .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A schema `pattern` (ECMA-262; ours stay within what the `regex` crate reads, as CEL's RE2
/// does).
fn regex_matches(pattern: &str, s: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(s))
}

/// CEL with the Kubernetes library functions our rules use: `isIP`, `isCIDR`, and `ip(s)`
/// with `.family()`.
fn cel_context() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    let root = "a root context takes functions";
    ctx.add_function("isIP", |s: Arc<String>| s.parse::<IpAddr>().is_ok())
        .expect(root);
    ctx.add_function("isCIDR", |s: Arc<String>| s.parse::<ipnet::IpNet>().is_ok())
        .expect(root);
    ctx.add_function("ip", |s: Arc<String>| s).expect(root);
    ctx.add_function("family", |This(s): This<Arc<String>>| -> i64 {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 4,
            Ok(IpAddr::V6(_)) => 6,
            Err(_) => 0,
        }
    })
    .expect(root);
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refusals(obj: Value) -> Vec<String> {
        Schemas::ours()
            .admit(&obj)
            .1
            .into_iter()
            .map(|r| format!("{}: {}", r.path, r.message))
            .collect()
    }

    #[test]
    fn a_valid_zone_is_admitted_and_a_bad_cidr_is_refused_by_its_cel_rule() {
        let zone = |cidrs: Value| {
            json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "NetworkZone",
                   "metadata": {"name": "lan"}, "spec": {"cidrs": cidrs}})
        };
        assert_eq!(refusals(zone(json!(["10.0.0.0/8"]))), Vec::<String>::new());
        let bad = refusals(zone(json!(["10.0.0.0/33"])));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].starts_with("spec.cidrs: "), "{bad:?}");
    }

    #[test]
    fn types_unknown_fields_and_required_fields_are_refused() {
        let bad = refusals(
            json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferRole",
            "metadata": {"name": "r"}, "spec": {"mounts": [{"path": "/in", "verbs": ["read", "fly"], "colour": 1}]}}),
        );
        let text = bad.join("\n");
        assert!(
            text.contains("spec.mounts[0].endpoint: is required"),
            "{text}"
        );
        assert!(
            text.contains("spec.mounts[0].verbs[1]: \"fly\" is not one of"),
            "{text}"
        );
        assert!(
            text.contains("spec.mounts[0].colour: is not a field"),
            "{text}"
        );
    }
}
