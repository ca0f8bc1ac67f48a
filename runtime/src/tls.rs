//! TLS for the agent's clients (the fleet store; outputs over HTTPS): rustls with the ring
//! provider, one provider for the whole process.

/// Installs ring as the process's rustls provider, once; later calls do nothing.
pub fn install_provider() {
    // Err means a provider is installed already, which is all this asks.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
