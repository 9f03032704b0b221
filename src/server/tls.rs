//! The https listener's rustls configuration: the server's certificate and key, and with a CA,
//! mutual TLS (every client must present a certificate signed by that CA).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::warn;

/// The one crypto provider of the process (aws-lc-rs).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process-wide rustls provider. Called first thing in `main`: should a
/// dependency ever enable a second provider, `ServerConfig::builder()` would otherwise panic for
/// not knowing which one to use. The configs built here name their provider anyway.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read_certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{flag} {}: reading PEM certificates", path.display()))?;
    if certificates.is_empty() {
        bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certificates)
}

/// Builds the https configuration from the `--tls-certificate`, `--tls-key` and `--tls-ca`
/// files. Errors name the flag and the file, never the key's content.
pub fn server_config(
    certificate: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> anyhow::Result<ServerConfig> {
    let chain = read_certificates(certificate, "--tls-certificate")?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: reading a PEM private key", key.display()))?;
    if let Ok(metadata) = std::fs::metadata(key) {
        if metadata.permissions().mode() & 0o077 != 0 {
            warn!(
                key = %key.display(),
                "the TLS private key is readable by other users than its owner; chmod 0600 it"
            );
        }
    }
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca, "--tls-ca")? {
                roots.add(certificate).with_context(|| {
                    format!("--tls-ca {}: not a usable CA certificate", ca.display())
                })?;
            }
            // Requires a certificate from every client: without one, the handshake fails.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("--tls-ca {}: client verifier", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .with_context(|| {
            format!(
                "--tls-certificate {} and --tls-key {} do not make a usable pair",
                certificate.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
