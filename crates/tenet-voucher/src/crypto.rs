//! What the protocol needs from cryptography, injected so the same state
//! machines run on a card (ECDSA P-256 with its X.509 certificate), in the
//! TTP, and in deterministic tests and the model checker.

use tenet_proto::EntityId;

/// Why a signature or certificate did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verification failed: {0}")]
pub struct VerifyError(pub String);

/// A party's keys and the trust anchor it checks others against.
pub trait Crypto {
    /// Signs `msg` with this party's private key.
    fn sign(&mut self, msg: &[u8]) -> Vec<u8>;
    /// This party's certificate.
    fn certificate(&self) -> Vec<u8>;
    /// Checks that `cert` was issued by the trusted CA for `signer`, and
    /// that `sig` over `msg` verifies with its key.
    fn verify(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError>;
    /// Fills `out` with random bytes.
    fn random(&mut self, out: &mut [u8]);
}

/// A deterministic stand-in for tests and the model checker: a
/// "certificate" is the entity id, a "signature" is a keyed hash that only
/// this module can make. Not for use outside tests.
#[derive(Debug, Clone)]
pub struct TestCrypto {
    id: EntityId,
    counter: u64,
}

impl TestCrypto {
    /// Keys for `id`; `seed` varies its random numbers.
    pub fn new(id: EntityId, seed: u64) -> Self {
        Self {
            id,
            counter: seed << 32,
        }
    }

    fn mac(id: &EntityId, msg: &[u8]) -> Vec<u8> {
        crate::model::h(&[b"test-sig", &id.to_array(), msg]).to_vec()
    }
}

impl Crypto for TestCrypto {
    fn sign(&mut self, msg: &[u8]) -> Vec<u8> {
        Self::mac(&self.id, msg)
    }

    fn certificate(&self) -> Vec<u8> {
        self.id.to_array().to_vec()
    }

    fn verify(
        &self,
        signer: EntityId,
        cert: &[u8],
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        let bytes: [u8; 16] = cert
            .try_into()
            .map_err(|_| VerifyError("bad certificate".into()))?;
        let id = EntityId::from_array(bytes);
        if id != signer {
            return Err(VerifyError(format!(
                "certificate is for {id}, not {signer}"
            )));
        }
        if Self::mac(&id, msg) == sig {
            Ok(())
        } else {
            Err(VerifyError("bad signature".into()))
        }
    }

    fn random(&mut self, out: &mut [u8]) {
        self.counter += 1;
        let r = crate::model::h(&[
            b"test-rand",
            &self.id.to_array(),
            &self.counter.to_be_bytes(),
        ]);
        for (i, b) in out.iter_mut().enumerate() {
            *b = r[i % 32];
        }
    }
}
