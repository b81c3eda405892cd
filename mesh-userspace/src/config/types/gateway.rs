//! Istio Gateway as users write it: servers, ports and server-side TLS.
use std::collections::BTreeMap;

use serde::Deserialize;

/// An Istio Gateway `spec`: the ports, protocols and hosts a load balancer at the mesh's edge
/// serves.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Labels of the gateway pods that serve it; the node proxy does not read it and opens every
    /// server's port itself.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// What the gateway listens for: one entry per port and set of hosts.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// One `servers` entry: a port, the hosts it admits, and its TLS settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port to listen on, its name and protocol.
    pub port: GatewayPort,
    /// Hosts served (`[namespace/]host`, `*` wildcards, `./` for the Gateway's namespace); a
    /// request for another gets 404.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Server-side TLS; only `mode: SIMPLE` with a `credentialName` on an HTTPS port is served by
    /// the node proxy.
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    /// Address to bind to (an IP or `unix://` socket) instead of all addresses; not enforced by the
    /// node proxy.
    #[serde(default)]
    pub bind: Option<String>,
    /// Optional name of the server, unique among the servers; Istio prefixes the server's stats
    /// with it.
    #[serde(default)]
    pub name: Option<String>,
    /// `defaultEndpoint`: where traffic goes (`127.0.0.1:8080`, `unix://...`) for a sidecar
    /// ingress; not enforced by the node proxy.
    #[serde(default)]
    pub default_endpoint: Option<String>,
}

/// A Gateway server's `port`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// Required; 0 when left out (valid only on a unix socket, as Istio says).
    #[serde(default)]
    pub number: u32,
    /// Name of the port (required by Istio; unique per Gateway).
    #[serde(default)]
    pub name: Option<String>,
    /// The protocol served: `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP` or `TLS`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `targetPort`: rejected when set, as Istio does ("targetPort has no impact on Gateways").
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// A server's `tls`: how TLS is terminated (or passed through) on the port.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// `httpsRedirect`: answer plain HTTP requests with a 301 to HTTPS; not enforced (served as
    /// plain HTTP).
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// `PASSTHROUGH`, `SIMPLE`, `MUTUAL`, `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL` or `OPTIONAL_MUTUAL`;
    /// only `SIMPLE` is served.
    #[serde(default)]
    pub mode: Option<String>,
    /// `serverCertificate`: path of the server certificate file; not read by the node proxy.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// `privateKey`: path of the server's private key file; not read by the node proxy.
    #[serde(default)]
    pub private_key: Option<String>,
    /// `caCertificates`: path of the CA bundle that verifies client certificates (`MUTUAL`, not
    /// served here).
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// `caCrl`: path of the revocation list checked against client certificates (`MUTUAL`, not
    /// served here).
    #[serde(default)]
    pub ca_crl: Option<String>,
    /// `credentialName`: the `kubernetes.io/tls` Secret (in the Gateway's namespace) holding the
    /// certificate and key.
    #[serde(default)]
    pub credential_name: Option<String>,
    /// `credentialNames`: up to two Secrets (e.g. RSA and ECDSA certificates); not read by the node
    /// proxy.
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// `caCertCredentialName`: Secret holding the CA that verifies client certificates (`MUTUAL`,
    /// not served here).
    #[serde(default)]
    pub ca_cert_credential_name: Option<String>,
    /// `tlsCertificates`: up to two certificate/key file pairs; not read by the node proxy.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// `subjectAltNames`: names a client certificate's SAN must contain one of (`MUTUAL`, not
    /// served here).
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// `verifyCertificateSpki`: base64 SPKI hashes a client certificate must match one of; not used
    /// by the node proxy.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// `verifyCertificateHash`: hex SHA-256 hashes a client certificate must match one of; not used
    /// by the node proxy.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// `minProtocolVersion`: lowest TLS version accepted (`TLSV1_0` to `TLSV1_3`); validated, not
    /// applied by the node proxy.
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    /// `maxProtocolVersion`: highest TLS version accepted; validated, not applied by the node
    /// proxy.
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    /// `cipherSuites`: cipher suites accepted (Envoy's defaults when empty); validated, not applied
    /// by the node proxy.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// `ecdhCurves`: ECDH curves accepted (Envoy's defaults when empty); not applied by the node
    /// proxy.
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    /// `insecureSkipVerify`: skip verifying client certificates; not used by the node proxy.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// One of `tlsCertificates`: a certificate and key given as file paths.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// `serverCertificate`: path of the certificate file.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// `privateKey`: path of the private key file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// `caCertificates`: path of the CA bundle that verifies client certificates.
    #[serde(default)]
    pub ca_certificates: Option<String>,
}
