//! `v1` `Secret` documents (the config directory, or the API server's watch rendered as one):
//! the key pairs ingress Gateway listeners terminate TLS with. Held as read — `data` decoded,
//! `stringData` merged over it as the API server does — and parsed as a certificate only when a
//! served listener names the Secret (`routing::gateway_tls`), so a broken Secret nothing uses
//! costs nothing and warns about nothing.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
};

use super::{Config, Locator};

/// The type a Secret must have to hold a Gateway's certificate (Istio and Gateway API agree).
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The key of a `kubernetes.io/tls` Secret holding the certificate chain (PEM).
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The key of a `kubernetes.io/tls` Secret holding the private key (PEM).
pub const TLS_PRIVATE_KEY: &str = "tls.key";

/// One Secret as read. Its `Debug` never shows the data: key material must not reach a log.
#[derive(Clone)]
pub struct SecretDoc {
    /// `type` as written (`Opaque` when absent, the API server's default).
    pub secret_type: String,
    /// `data` base64-decoded, with `stringData` over it.
    pub data: BTreeMap<String, Arc<[u8]>>,
    /// Why the document could not be read (bad base64, a field of the wrong shape): a listener
    /// naming the Secret is warned with this and not served.
    pub problem: Option<String>,
    /// Where it came from (`file:line`, or `k8s:Secret/ns/name`).
    pub at: Arc<Locator>,
}

impl fmt::Debug for SecretDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDoc")
            .field("secret_type", &self.secret_type)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("problem", &self.problem)
            .field("file", &self.at.file)
            .finish()
    }
}

impl Config {
    /// Keeps a `v1` `Secret` document (namespace/name → its data); a later one of the same name
    /// replaces it, as a second `kubectl apply` would.
    pub(super) fn keep_secret(&mut self, name: &str, namespace: &str, text: &str, at: Arc<Locator>) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Doc {
            #[serde(default, rename = "type")]
            secret_type: Option<String>,
            /// k8s-openapi's ByteString decodes the base64 as the API server does.
            #[serde(default)]
            data: Option<BTreeMap<String, k8s_openapi::ByteString>>,
            #[serde(default)]
            string_data: Option<BTreeMap<String, String>>,
        }
        let doc = match serde_yaml::from_str::<Doc>(text) {
            Ok(d) => d,
            Err(e) => {
                // The serde message names the field, never the data (base64 errors say where).
                let problem = format!("Secret {namespace}/{name} cannot be read: {e}");
                let secret =
                    SecretDoc { secret_type: String::new(), data: BTreeMap::new(), problem: Some(problem), at };
                self.secrets.insert((namespace.to_owned(), name.to_owned()), secret);
                return;
            }
        };
        let mut data: BTreeMap<String, Arc<[u8]>> =
            doc.data.unwrap_or_default().into_iter().map(|(k, v)| (k, Arc::from(v.0))).collect();
        for (k, v) in doc.string_data.unwrap_or_default() {
            data.insert(k, Arc::from(v.into_bytes()));
        }
        let secret = SecretDoc {
            secret_type: doc.secret_type.filter(|t| !t.is_empty()).unwrap_or_else(|| "Opaque".into()),
            data,
            problem: None,
            at,
        };
        self.secrets.insert((namespace.to_owned(), name.to_owned()), secret);
    }

    /// The namespaces the Gateways take TLS certificates from: each Gateway API listener's
    /// `certificateRefs` namespaces (the Gateway's when unset) and the namespace of each Istio
    /// Gateway with a `credentialName`. What the API server's Secret watch covers.
    pub fn tls_secret_namespaces(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for g in &self.kube_gateways {
            for t in g.spec.listeners.iter().filter_map(|l| l.tls.as_ref()) {
                for r in &t.certificate_refs {
                    let ns = r.get("namespace").and_then(serde_yaml::Value::as_str).unwrap_or(&g.namespace);
                    out.insert(ns.to_owned());
                }
            }
        }
        for g in &self.gateways {
            if g.spec.servers.iter().any(|s| s.tls.as_ref().is_some_and(|t| t.credential_name.is_some())) {
                out.insert(g.namespace.clone());
            }
        }
        out
    }
}
