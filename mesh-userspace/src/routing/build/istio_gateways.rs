//! Compiling the Istio Gateways' servers into ingress listeners: ports, hosts, and the
//! certificate a `tls.mode: SIMPLE` server terminates TLS with.
use super::*;

impl Builder<'_> {
    /// The listeners of the Istio Gateways.
    pub(super) fn istio_gateways(
        &mut self,
        config: &config::Config,
        table: &mut RouteTable,
        rejected: &mut Vec<config::Rejected>,
    ) {
        for gw in &config.gateways {
            let before = self.errors.len();
            let mut ports = gateway_tls::Ports::new();
            for (i, server) in gw.spec.servers.iter().enumerate() {
                // Port 0 on a unix socket is valid Istio (validate checks it); the node has no such
                // listener to open.
                if server.port.number == 0 && server.bind.as_deref().is_some_and(|b| b.starts_with("unix://")) {
                    self.warnings.push(format!("Gateway {}: servers[{i}] binds a unix socket; not served", gw.key()));
                    continue;
                }
                let port = match u16::try_from(server.port.number) {
                    Ok(port) if port > 0 => port,
                    _ => {
                        self.errors.push(gw.at.error(
                            format!("spec.servers[{i}].port.number"),
                            format!("{} is not a port number", server.port.number),
                        ));
                        continue;
                    }
                };
                let cert = match self.istio_server_tls(config, gw, i) {
                    Ok(cert) => cert,
                    Err(why) => {
                        self.warnings.push(
                            gw.at
                                .error(
                                    format!("spec.servers[{i}].tls"),
                                    format!("server on port {port} not served: {why}"),
                                )
                                .to_string(),
                        );
                        continue;
                    }
                };
                let cert = cert.map(|key| (gateway_tls::istio_sni_names(&server.hosts), key));
                if let Err(why) = gateway_tls::add_listener(&mut ports, port, server.hosts.iter().cloned(), cert) {
                    self.warnings
                        .push(gw.at.error(format!("spec.servers[{i}]"), format!("not served: {why}")).to_string());
                }
            }
            if self.reject_since(rejected, before, "Gateway", (&gw.name, &gw.namespace), &gw.at.file) {
                continue;
            }
            for (port, listeners) in ports {
                if let Err(why) = gateway_tls::serve_port(table, (&gw.namespace, &gw.name), port, listeners) {
                    self.warnings.push(format!("Gateway {}: port {port} not served: {why}", gw.key()));
                }
            }
        }
    }

    /// The certificate an Istio Gateway server terminates TLS with: None for a plain server,
    /// the `credentialName` Secret (in the Gateway's namespace) for `tls.mode: SIMPLE`. Err: why
    /// the server is not served (another TLS mode, certificate files, a bad Secret).
    fn istio_server_tls(
        &mut self,
        config: &config::Config,
        gw: &Sourced<config::GatewaySpec>,
        i: usize,
    ) -> Result<Option<Arc<rustls::sign::CertifiedKey>>, String> {
        let Some(server) = gw.spec.servers.get(i) else { return Ok(None) };
        let Some(tls) = &server.tls else { return Ok(None) };
        let protocol = server.port.protocol.as_deref().unwrap_or("");
        match tls.mode.as_deref() {
            // Only `httpsRedirect` on a plain server (validation forbids the rest there).
            None | Some("") if tls.https_redirect == Some(true) => {
                self.warnings.push(format!(
                    "Gateway {}: servers[{i}].tls.httpsRedirect is not implemented; the port is served as plain HTTP",
                    gw.key()
                ));
                Ok(None)
            }
            Some("SIMPLE") if !protocol.eq_ignore_ascii_case("HTTPS") => Err(format!(
                "tls.mode SIMPLE on a {} port (TLS-terminated TCP) is not implemented; HTTPS ports are",
                config::cut(protocol, 20)
            )),
            Some("SIMPLE") => match tls.credential_name.as_deref().filter(|c| !c.is_empty()) {
                Some(name) => gateway_tls::secret_key_pair(config, &gw.namespace, name).map(Some),
                None => Err("tls.mode SIMPLE is served from a credentialName Secret only (serverCertificate/privateKey files and credentialNames are not read)".into()),
            },
            mode => Err(format!(
                "tls.mode {} is not implemented (only SIMPLE is terminated)",
                mode.filter(|m| !m.is_empty()).unwrap_or("PASSTHROUGH (the default)")
            )),
        }
    }
}
