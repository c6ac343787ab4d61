//! MPush's cryptography and body compression, reproduced byte for byte.
//!
//! MPush protects its device link with home-made crypto instead of TLS, and pushgate has to speak it
//! exactly as deployed clients do:
//!
//! - **RSA** ("RSA/ECB/PKCS1Padding", normally 1024-bit) carries the client's HANDSHAKE body: the
//!   client encrypts it in chunks of `modulus_bytes - 11` bytes with the public key it has embedded,
//!   each chunk becoming one `modulus_bytes` block; the server decrypts block by block
//!   ([`ClientRsaKey`], [`ServerRsaKey`]). MPush's shipped default private key holds only `n` and
//!   `d` (every other field is 0), which strict parsers refuse; [`ServerRsaKey`] loads it anyway,
//!   recovers `p` and `q` once and then decrypts with the (much faster) CRT. Outside the
//!   simulator the private-key operation runs in OpenSSL (several times faster than the `rsa`
//!   crate on this path; same bytes out, same blocks refused), see [`ServerRsaKey::decrypt`].
//! - **AES-128-CBC with PKCS#7 padding** ("AES/CBC/PKCS5Padding") protects every later packet. The
//!   IV is chosen once per connection and reused for every packet, each packet being encrypted
//!   independently ([`AesCipher`]); the session key is clientKey XOR serverKey ([`mix_keys`]).
//! - **zlib** (what Java's `DeflaterOutputStream` writes, level 6) compresses large bodies;
//!   iOS clients send **gzip**. [`inflate`] auto-detects both and is bounded, so a small
//!   compressed packet can never make the server allocate more than the caller allows.
//!
//! The module is sans-IO like the rest of the crate: no clock, and no ambient randomness. Functions
//! that need random numbers (RSA padding, RSA blinding, key generation) take an RNG from the caller.
//! No function panics on untrusted input; every failure is a [`CryptoError`].

use std::fmt;
use std::sync::OnceLock;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use flate2::{Compression, Crc, Decompress, FlushDecompress, Status};
use rand_core::CryptoRngCore;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};

/// AES key length used by MPush (`mp.security.aes-key-length = 16`).
pub const AES_KEY_BYTES: usize = 16;
/// AES IV length (one AES block).
pub const AES_IV_BYTES: usize = 16;
/// AES block size; ciphertexts are a non-zero multiple of it.
const AES_BLOCK_BYTES: usize = 16;
/// PKCS#1 v1.5 type-2 padding overhead: a plaintext chunk is at most `modulus_bytes - 11` bytes.
pub const RSA_PKCS1_OVERHEAD_BYTES: usize = 11;
/// zlib level used by Java's `Deflater` by default (`Deflater.DEFAULT_COMPRESSION` = 6).
pub const ZLIB_LEVEL: u32 = 6;

/// The public key every MPush client embeds (base64 X.509 SubjectPublicKeyInfo), matching
/// [`ServerRsaKey::mpush_default`].
pub const MPUSH_DEFAULT_PUBLIC_KEY_B64: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCghPCWCobG8nTD24juwSVataW7iViRxcTkey/B792VZEhuHjQvA3cAJgx2Lv8GnX8NIoShZtoCg3Cx6ecs+VEPD2fBcg2L4JK7xldGpOJ3ONEAyVsLOttXZtNXvyDZRijiErQALMTorcgi79M5uVX9/jMv2Ggb2XAeZhlLD28fHwIDAQAB";

/// Modulus of MPush's default key pair (hex).
const MPUSH_DEFAULT_N_HEX: &str = "A084F0960A86C6F274C3DB88EEC1255AB5A5BB895891C5C4E47B2FC1EFDD9564486E1E342F037700260C762EFF069D7F0D2284A166DA028370B1E9E72CF9510F0F67C1720D8BE092BBC65746A4E27738D100C95B0B3ADB5766D357BF20D94628E212B4002CC4E8ADC822EFD339B955FDFE332FD8681BD9701E66194B0F6F1F1F";
/// Public exponent of MPush's default key pair (hex).
const MPUSH_DEFAULT_E_HEX: &str = "10001";
/// Private exponent of MPush's default key pair (hex).
const MPUSH_DEFAULT_D_HEX: &str = "032D3E59A9D1AB04475D4CEDF3D3ACBA93D7B8D36A065084AA04EA180B783629AAE94AFDBB6475297297528B718E9EF551BC3A25BB945AF260FB946677D4634F41CE504405DEBBF311EA4AB5AADA3E15797A3108AC1FA725635F1B27B8CB32DD7C45C9046510CEB1BEC0D7B5DE2CDF44D5C8E1D37FE90E67A73A9AAAFD04D429";

/// Public exponent assumed when a key leaves it out (MPush's default key stores 0).
const DEFAULT_PUBLIC_EXPONENT: u32 = 65_537;
/// Key sizes [`ServerRsaKey::generate`] accepts (MPush's generator wants at least 1024 bits;
/// `rsa` caps moduli at 4096 bits).
const MIN_GENERATED_BITS: usize = 1024;
const MAX_GENERATED_BITS: usize = 4096;

/// Base64 as Java writes it, but also accepting input whose `=` padding was dropped.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// A key could not be parsed, is inconsistent, or cannot be generated as asked.
    #[error("bad RSA key: {0}")]
    BadKey(String),
    /// An RSA block did not decrypt (wrong key, block ≥ modulus, or bad PKCS#1 v1.5 padding).
    #[error("RSA decryption failed")]
    RsaDecrypt,
    /// RSA encryption failed (a key too small to hold any PKCS#1 v1.5 payload).
    #[error("RSA encryption failed")]
    RsaEncrypt,
    /// RSA ciphertext that is not a whole number of blocks.
    #[error("RSA ciphertext of {len} bytes is not a multiple of the {block_bytes}-byte block")]
    BadCiphertextLength {
        /// Length of the ciphertext received.
        len: usize,
        /// Block size, the modulus length in bytes.
        block_bytes: usize,
    },
    /// AES ciphertext with a bad length (empty or not a multiple of 16) or bad padding.
    #[error("AES decryption failed (bad length or padding)")]
    AesDecrypt,
    /// A corrupt or truncated zlib/gzip stream.
    #[error("inflate failed: {0}")]
    Inflate(String),
    /// The decompressed body would exceed the caller's bound.
    #[error("inflated body exceeds {max_bytes} bytes")]
    InflateTooLarge {
        /// The bound that would have been exceeded.
        max_bytes: usize,
    },
    /// Decompression produced nothing; MPush treats an empty processed body as a decode error.
    #[error("body is empty after inflating")]
    EmptyBody,
    /// The compressed body is neither zlib nor gzip.
    #[error("compressed body is neither zlib nor gzip")]
    UnknownCompression,
}

// ---------------------------------------------------------------------------------------------
// AES
// ---------------------------------------------------------------------------------------------

/// AES-128-CBC with PKCS#7 padding and a fixed per-connection IV.
///
/// Every packet is encrypted on its own, always starting from the same IV, exactly like MPush's
/// `AesCipher`: equal plaintexts give equal ciphertexts (this is what the protocol does; pushgate
/// cannot change it without breaking clients).
#[derive(Clone, PartialEq, Eq)]
pub struct AesCipher {
    key: [u8; AES_KEY_BYTES],
    iv: [u8; AES_IV_BYTES],
}

impl AesCipher {
    /// A cipher for `key` with the connection's `iv`.
    pub fn new(key: [u8; AES_KEY_BYTES], iv: [u8; AES_IV_BYTES]) -> Self {
        Self { key, iv }
    }

    /// The AES key.
    pub fn key(&self) -> &[u8; AES_KEY_BYTES] {
        &self.key
    }

    /// The IV used for every packet.
    pub fn iv(&self) -> &[u8; AES_IV_BYTES] {
        &self.iv
    }

    /// Length of the ciphertext for a plaintext of `plain_len` bytes (padding always adds 1..=16).
    pub fn ciphertext_len(plain_len: usize) -> usize {
        (plain_len / AES_BLOCK_BYTES + 1) * AES_BLOCK_BYTES
    }

    /// Encrypts one packet body.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ciphertext_len(plain.len()));
        self.encrypt_into(plain, &mut out);
        out
    }

    /// Encrypts one packet body, appending the ciphertext to `out` (lets the caller reuse a buffer).
    pub fn encrypt_into(&self, plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let pad_len = AES_BLOCK_BYTES - plain.len() % AES_BLOCK_BYTES; // 1..=16
        out.reserve(plain.len() + pad_len);
        out.extend_from_slice(plain);
        // PKCS#7: `pad_len` bytes, each equal to `pad_len` (≤ 16, so it fits a byte).
        out.resize(start + plain.len() + pad_len, pad_len as u8);
        let mut encryptor = Aes128CbcEnc::new(&self.key.into(), &self.iv.into());
        for block in out[start..].chunks_exact_mut(AES_BLOCK_BYTES) {
            encryptor.encrypt_block_mut(block.into());
        }
    }

    /// Decrypts one packet body. Empty input, a length that is not a multiple of 16, and bad
    /// padding are all [`CryptoError::AesDecrypt`].
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(AES_BLOCK_BYTES) {
            return Err(CryptoError::AesDecrypt);
        }
        Aes128CbcDec::new(&self.key.into(), &self.iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .map_err(|_| CryptoError::AesDecrypt)
    }
}

impl fmt::Debug for AesCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the key nor the IV is printed: logs must not leak session secrets.
        f.debug_struct("AesCipher").finish_non_exhaustive()
    }
}

/// The session key: clientKey XOR serverKey, byte by byte.
pub fn mix_keys(
    client_key: &[u8; AES_KEY_BYTES],
    server_key: &[u8; AES_KEY_BYTES],
) -> [u8; AES_KEY_BYTES] {
    let mut mixed = [0u8; AES_KEY_BYTES];
    for ((m, c), s) in mixed.iter_mut().zip(client_key).zip(server_key) {
        *m = c ^ s;
    }
    mixed
}

// ---------------------------------------------------------------------------------------------
// RSA
// ---------------------------------------------------------------------------------------------

/// The server's RSA private key, used to decrypt the client's HANDSHAKE body.
///
/// Always holds both primes with precomputed CRT values, whatever form the key was loaded from.
#[derive(Clone)]
pub struct ServerRsaKey {
    inner: RsaPrivateKey,
    /// The same key in OpenSSL, which decrypts. `None` where OpenSSL would not refuse bad
    /// padding (see [`openssl_refuses_bad_padding`]) or could not load the key: `inner`
    /// decrypts then. The simulator has no OpenSSL (its runs must replay from their seed).
    #[cfg(not(madsim))]
    openssl: Option<std::sync::Arc<openssl::rsa::Rsa<openssl::pkey::Private>>>,
}

impl ServerRsaKey {
    /// MPush's default key pair (the one behind [`MPUSH_DEFAULT_PUBLIC_KEY_B64`]).
    ///
    /// Recovering its primes costs a little, so it is done once per process and cloned after.
    pub fn mpush_default() -> Self {
        static DEFAULT: OnceLock<ServerRsaKey> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Self::from_hex_components(
                    MPUSH_DEFAULT_N_HEX,
                    MPUSH_DEFAULT_E_HEX,
                    MPUSH_DEFAULT_D_HEX,
                )
                .expect("MPush's default RSA key numbers are a valid key (checked by tests)")
            })
            .clone()
    }

    /// A key from big-endian `n`, `e` and `d`. An empty or zero `e` means 65537.
    pub fn from_components(n: &[u8], e: &[u8], d: &[u8]) -> Result<Self, CryptoError> {
        Self::from_numbers(
            BigUint::from_bytes_be(n),
            BigUint::from_bytes_be(e),
            BigUint::from_bytes_be(d),
            None,
        )
    }

    /// A key from hex `n`, `e` and `d` (case-insensitive, optional `0x`, odd length allowed, so
    /// `e = "10001"` works). An empty or zero `e` means 65537.
    pub fn from_hex_components(n: &str, e: &str, d: &str) -> Result<Self, CryptoError> {
        Self::from_numbers(
            parse_hex_uint(n, "n")?,
            parse_hex_uint(e, "e")?,
            parse_hex_uint(d, "d")?,
            None,
        )
    }

    /// A key from base64 PKCS#8 DER (`mp.security.private-key`). Whitespace and newlines are
    /// ignored. Accepts normal keys and MPush's odd default key whose PKCS#1 body sets only `n` and
    /// `d` (public exponent and CRT fields 0): the DER is parsed without validation, a zero `e`
    /// becomes 65537 and missing primes are recovered from `(n, e, d)`.
    pub fn from_pkcs8_base64(b64: &str) -> Result<Self, CryptoError> {
        let der = decode_base64(b64)?;
        Self::from_pkcs8_der(&der)
    }

    /// Same as [`ServerRsaKey::from_pkcs8_base64`], from the DER bytes.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let info = rsa::pkcs8::PrivateKeyInfo::try_from(der)
            .map_err(|e| CryptoError::BadKey(format!("not PKCS#8: {e}")))?;
        if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
            return Err(CryptoError::BadKey(format!(
                "not an RSA key (algorithm {})",
                info.algorithm.oid
            )));
        }
        let key = rsa::pkcs1::RsaPrivateKey::try_from(info.private_key)
            .map_err(|e| CryptoError::BadKey(format!("bad PKCS#1 RSAPrivateKey: {e}")))?;
        if key.other_prime_infos.is_some() {
            return Err(CryptoError::BadKey(
                "multi-prime RSA keys are not supported".into(),
            ));
        }
        let uint = |u: rsa::pkcs1::UintRef<'_>| BigUint::from_bytes_be(u.as_bytes());
        let (p, q) = (uint(key.prime1), uint(key.prime2));
        let primes = if p.bits() == 0 || q.bits() == 0 {
            None // MPush's default key: recover them
        } else {
            Some((p, q))
        };
        Self::from_numbers(
            uint(key.modulus),
            uint(key.public_exponent),
            uint(key.private_exponent),
            primes,
        )
    }

    /// The key as base64 PKCS#8 DER: a normal, complete key (with `e`, primes and CRT fields) that
    /// any library, and MPush's Java server, can load.
    pub fn to_pkcs8_base64(&self) -> String {
        // Every constructor checks that the key has two primes and a CRT coefficient, which is all
        // the encoder needs.
        let der = self
            .inner
            .to_pkcs8_der()
            .expect("a validated two-prime key always encodes as PKCS#8");
        STANDARD.encode(der.as_bytes())
    }

    /// The matching public key, as clients embed it.
    pub fn public_key(&self) -> ClientRsaKey {
        ClientRsaKey::from_rsa(self.inner.to_public_key())
    }

    /// A fresh key pair of `bits` bits (1024..=4096) with e = 65537, for `pushgate keygen`.
    pub fn generate(rng: &mut impl CryptoRngCore, bits: usize) -> Result<Self, CryptoError> {
        if !(MIN_GENERATED_BITS..=MAX_GENERATED_BITS).contains(&bits) {
            return Err(CryptoError::BadKey(format!(
                "key size {bits} bits is outside {MIN_GENERATED_BITS}..={MAX_GENERATED_BITS}"
            )));
        }
        let key = RsaPrivateKey::new(rng, bits)
            .map_err(|e| CryptoError::BadKey(format!("key generation failed: {e}")))?;
        Self::from_rsa(key)
    }

    /// The modulus length in bytes: the RSA block size (128 for a 1024-bit key).
    pub fn modulus_bytes(&self) -> usize {
        self.inner.size()
    }

    /// Decrypts `ciphertext`, a concatenation of `modulus_bytes` PKCS#1 v1.5 blocks, into the
    /// concatenated plaintexts. `rng` blinds the private-key operation. An empty ciphertext gives
    /// an empty plaintext (as in MPush); a length that is not a multiple of the block size is
    /// [`CryptoError::BadCiphertextLength`]; any bad block is [`CryptoError::RsaDecrypt`].
    pub fn decrypt(
        &self,
        rng: &mut impl CryptoRngCore,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let block_bytes = self.modulus_bytes();
        if block_bytes == 0 || !ciphertext.len().is_multiple_of(block_bytes) {
            return Err(CryptoError::BadCiphertextLength {
                len: ciphertext.len(),
                block_bytes,
            });
        }
        let max_chunk = block_bytes.saturating_sub(RSA_PKCS1_OVERHEAD_BYTES);
        let mut plain = Vec::with_capacity(ciphertext.len() / block_bytes * max_chunk);
        #[cfg(not(madsim))]
        if let Some(key) = &self.openssl {
            // OpenSSL blinds with its own generator; `rng` is not needed.
            let mut chunk = vec![0u8; block_bytes];
            for block in ciphertext.chunks_exact(block_bytes) {
                let len = key
                    .private_decrypt(block, &mut chunk, openssl::rsa::Padding::PKCS1)
                    .map_err(|_| CryptoError::RsaDecrypt)?;
                plain.extend_from_slice(&chunk[..len]);
            }
            return Ok(plain);
        }
        for block in ciphertext.chunks_exact(block_bytes) {
            let chunk = self
                .inner
                .decrypt_blinded(rng, Pkcs1v15Encrypt, block)
                .map_err(|_| CryptoError::RsaDecrypt)?;
            plain.extend_from_slice(&chunk);
        }
        Ok(plain)
    }

    /// Decrypts with the `rsa` crate only (what [`ServerRsaKey::decrypt`] does in the
    /// simulator): the reference the OpenSSL path is checked against.
    #[cfg(test)]
    fn decrypt_pure(
        &self,
        rng: &mut impl CryptoRngCore,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        Self {
            inner: self.inner.clone(),
            #[cfg(not(madsim))]
            openssl: None,
        }
        .decrypt(rng, ciphertext)
    }

    /// Builds the key from its numbers, checking everything `rsa` would otherwise panic on.
    fn from_numbers(
        n: BigUint,
        e: BigUint,
        d: BigUint,
        primes: Option<(BigUint, BigUint)>,
    ) -> Result<Self, CryptoError> {
        let e = if e.bits() == 0 {
            BigUint::from(DEFAULT_PUBLIC_EXPONENT)
        } else {
            e
        };
        // Checks n's size (≤ 4096 bits), n odd, e odd, 2 ≤ e < n and e small enough.
        RsaPublicKey::new(n.clone(), e.clone())
            .map_err(|err| CryptoError::BadKey(format!("bad public part: {err}")))?;
        // `rsa`'s prime recovery computes d·e − 1, which underflows for d = 0.
        if d.bits() == 0 || d >= n {
            return Err(CryptoError::BadKey(
                "private exponent must be in 1..n".into(),
            ));
        }
        let primes = match primes {
            Some((p, q)) => vec![p, q],
            None => Vec::new(), // `from_components` recovers p and q from (n, e, d)
        };
        let key = RsaPrivateKey::from_components(n, e, d, primes)
            .map_err(|err| CryptoError::BadKey(format!("inconsistent key: {err}")))?;
        Self::from_rsa(key)
    }

    /// Wraps a key, making sure it has two primes and CRT values (fast decryption, and a
    /// complete PKCS#8 encoding).
    fn from_rsa(mut key: RsaPrivateKey) -> Result<Self, CryptoError> {
        if key.primes().len() != 2 {
            return Err(CryptoError::BadKey(
                "only two-prime RSA keys are supported".into(),
            ));
        }
        key.precompute()
            .map_err(|err| CryptoError::BadKey(format!("cannot precompute CRT values: {err}")))?;
        if key.crt_coefficient().is_none() {
            return Err(CryptoError::BadKey("primes have no CRT coefficient".into()));
        }
        Ok(Self {
            #[cfg(not(madsim))]
            openssl: openssl_key(&key),
            inner: key,
        })
    }
}

/// `key` loaded into OpenSSL (from its complete PKCS#1 encoding, CRT values included), when
/// OpenSSL can stand in for the `rsa` crate.
#[cfg(not(madsim))]
fn openssl_key(
    key: &RsaPrivateKey,
) -> Option<std::sync::Arc<openssl::rsa::Rsa<openssl::pkey::Private>>> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    if !openssl_refuses_bad_padding() {
        return None;
    }
    let der = key.to_pkcs1_der().ok()?;
    let loaded = openssl::rsa::Rsa::private_key_from_der(der.as_bytes()).ok()?;
    Some(std::sync::Arc::new(loaded))
}

/// Whether the linked OpenSSL reports a block with bad PKCS#1 v1.5 padding as an error, as
/// the `rsa` crate and MPush's Java server do. OpenSSL 3.2 and later answer such a block with
/// a made-up plaintext instead ("implicit rejection"), which would hand garbage to the
/// handshake decoder; with those versions the `rsa` crate decrypts.
#[cfg(not(madsim))]
fn openssl_refuses_bad_padding() -> bool {
    const OPENSSL_3_2: i64 = 0x3020_0000;
    openssl::version::number() < OPENSSL_3_2
}

impl fmt::Debug for ServerRsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public facts: the size and the start of the modulus, to tell keys apart in logs.
        let n = self.inner.n().to_bytes_be();
        let n_prefix: String = n.iter().take(4).map(|b| format!("{b:02x}")).collect();
        f.debug_struct("ServerRsaKey")
            .field("bits", &self.inner.n().bits())
            .field("n_prefix", &n_prefix)
            .finish_non_exhaustive()
    }
}

/// The RSA public key as clients embed it; encrypts the HANDSHAKE body on the client side
/// (pushgate uses it in tests, the simulator and load generators).
#[derive(Clone)]
pub struct ClientRsaKey {
    inner: RsaPublicKey,
    /// `inner` loaded into OpenSSL once, for [`ClientRsaKey::encrypt`] outside the simulator.
    #[cfg(not(madsim))]
    openssl: Option<std::sync::Arc<openssl::rsa::Rsa<openssl::pkey::Public>>>,
}

impl PartialEq for ClientRsaKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for ClientRsaKey {}

impl fmt::Debug for ClientRsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRsaKey")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ClientRsaKey {
    fn from_rsa(inner: RsaPublicKey) -> Self {
        Self {
            #[cfg(not(madsim))]
            openssl: openssl_public_key(&inner),
            inner,
        }
    }

    /// The public key every MPush client ships with ([`MPUSH_DEFAULT_PUBLIC_KEY_B64`]).
    pub fn mpush_default() -> Self {
        Self::from_x509_base64(MPUSH_DEFAULT_PUBLIC_KEY_B64)
            .expect("MPush's default public key parses (checked by tests)")
    }

    /// A key from base64 X.509 SubjectPublicKeyInfo DER (`mp.security.public-key`). Whitespace
    /// and newlines are ignored.
    pub fn from_x509_base64(b64: &str) -> Result<Self, CryptoError> {
        use rsa::pkcs8::DecodePublicKey as _;
        let der = decode_base64(b64)?;
        let inner = RsaPublicKey::from_public_key_der(&der)
            .map_err(|e| CryptoError::BadKey(format!("bad X.509 public key: {e}")))?;
        Ok(Self::from_rsa(inner))
    }

    /// The key as base64 X.509 SubjectPublicKeyInfo DER, the form clients embed.
    pub fn to_x509_base64(&self) -> String {
        // Encoding two integers far below DER's length limits cannot fail.
        let der = self
            .inner
            .to_public_key_der()
            .expect("an RSA public key always encodes as X.509");
        STANDARD.encode(der.as_bytes())
    }

    /// The modulus length in bytes: the RSA block size (128 for a 1024-bit key).
    pub fn modulus_bytes(&self) -> usize {
        self.inner.size()
    }

    /// Encrypts `plain` in chunks of `modulus_bytes - 11` bytes, each giving one `modulus_bytes`
    /// PKCS#1 v1.5 block, blocks concatenated (MPush's `RSAUtils.encryptByPublicKey`). An empty
    /// plaintext gives an empty ciphertext. `rng` provides the random padding.
    pub fn encrypt(
        &self,
        rng: &mut impl CryptoRngCore,
        plain: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let block_bytes = self.modulus_bytes();
        let chunk_bytes = block_bytes.saturating_sub(RSA_PKCS1_OVERHEAD_BYTES);
        if chunk_bytes == 0 {
            return Err(CryptoError::RsaEncrypt);
        }
        let mut out = Vec::with_capacity(plain.len().div_ceil(chunk_bytes) * block_bytes);
        for chunk in plain.chunks(chunk_bytes) {
            let block = self.encrypt_block(rng, chunk)?;
            out.extend_from_slice(&block);
        }
        Ok(out)
    }

    /// One PKCS#1 v1.5 block of `chunk` (at most `modulus_bytes - 11` bytes). Outside the
    /// simulator OpenSSL does the modular exponentiation (the `rsa` crate's took about a third
    /// of the load generator's CPU per handshake) on a block padded here as RFC 8017 §7.2.1
    /// says, with `rng`'s bytes: the randomness still comes from the caller.
    fn encrypt_block(
        &self,
        rng: &mut impl CryptoRngCore,
        chunk: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        #[cfg(not(madsim))]
        if let Some(key) = &self.openssl {
            let block_bytes = self.modulus_bytes();
            if chunk.len() + RSA_PKCS1_OVERHEAD_BYTES > block_bytes {
                return Err(CryptoError::RsaEncrypt);
            }
            // 0x00 0x02, nonzero random padding, 0x00, the message.
            let mut padded = vec![0u8; block_bytes];
            padded[1] = 2;
            let separator = block_bytes - chunk.len() - 1;
            fill_nonzero(rng, &mut padded[2..separator]);
            padded[separator + 1..].copy_from_slice(chunk);
            let mut block = vec![0u8; block_bytes];
            let written = key
                .public_encrypt(&padded, &mut block, openssl::rsa::Padding::NONE)
                .map_err(|_| CryptoError::RsaEncrypt)?;
            debug_assert_eq!(written, block_bytes);
            return Ok(block);
        }
        self.inner
            .encrypt(rng, Pkcs1v15Encrypt, chunk)
            .map_err(|_| CryptoError::RsaEncrypt)
    }
}

/// `key` loaded into OpenSSL, when OpenSSL takes it (else the `rsa` crate encrypts).
#[cfg(not(madsim))]
fn openssl_public_key(
    key: &RsaPublicKey,
) -> Option<std::sync::Arc<openssl::rsa::Rsa<openssl::pkey::Public>>> {
    let n = openssl::bn::BigNum::from_slice(&key.n().to_bytes_be()).ok()?;
    let e = openssl::bn::BigNum::from_slice(&key.e().to_bytes_be()).ok()?;
    let loaded = openssl::rsa::Rsa::from_public_components(n, e).ok()?;
    Some(std::sync::Arc::new(loaded))
}

/// Fills `out` with random bytes from `rng`, none of them zero (PKCS#1 v1.5 padding).
#[cfg(not(madsim))]
fn fill_nonzero(rng: &mut impl CryptoRngCore, out: &mut [u8]) {
    rng.fill_bytes(out);
    for byte in out.iter_mut() {
        while *byte == 0 {
            let mut one = [0u8; 1];
            rng.fill_bytes(&mut one);
            *byte = one[0];
        }
    }
}

/// Decodes base64 key text, ignoring whitespace and tolerating missing `=` padding.
fn decode_base64(b64: &str) -> Result<Vec<u8>, CryptoError> {
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64_LENIENT
        .decode(compact.as_bytes())
        .map_err(|e| CryptoError::BadKey(format!("bad base64: {e}")))
}

/// Parses a big-endian hex number (`what` names it in errors).
fn parse_hex_uint(hex: &str, what: &str) -> Result<BigUint, CryptoError> {
    let digits = hex.trim();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    if digits.is_empty() {
        return Ok(BigUint::from(0u8));
    }
    BigUint::parse_bytes(digits.as_bytes(), 16)
        .ok_or_else(|| CryptoError::BadKey(format!("{what} is not a hex number")))
}

// ---------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------

/// Compresses `data` as a zlib stream (2-byte header, deflate at level 6, Adler-32), identical to
/// what Java's `DeflaterOutputStream` with a default `Deflater` writes (same C zlib algorithm).
///
/// Compressing into memory cannot fail in practice; should zlib ever report an error, the result
/// is empty, as with MPush's `IOUtils.compress` (callers then send the body uncompressed).
pub fn deflate_zlib(data: &[u8]) -> Vec<u8> {
    compress_with(data, |out| {
        flate2::write::ZlibEncoder::new(out, Compression::new(ZLIB_LEVEL))
    })
}

/// Compresses `data` as a gzip member (what iOS clients send). Same failure rule as
/// [`deflate_zlib`].
pub fn gzip(data: &[u8]) -> Vec<u8> {
    compress_with(data, |out| {
        flate2::write::GzEncoder::new(out, Compression::new(ZLIB_LEVEL))
    })
}

/// Anything from flate2's write-side encoders we need.
trait FinishEncoder: std::io::Write {
    fn finish_vec(self) -> std::io::Result<Vec<u8>>;
}

impl FinishEncoder for flate2::write::ZlibEncoder<Vec<u8>> {
    fn finish_vec(self) -> std::io::Result<Vec<u8>> {
        self.finish()
    }
}

impl FinishEncoder for flate2::write::GzEncoder<Vec<u8>> {
    fn finish_vec(self) -> std::io::Result<Vec<u8>> {
        self.finish()
    }
}

fn compress_with<E: FinishEncoder>(data: &[u8], make: impl FnOnce(Vec<u8>) -> E) -> Vec<u8> {
    let mut encoder = make(Vec::with_capacity(data.len() / 2 + 64));
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish_vec())
        .unwrap_or_default()
}

/// Inflates a compressed body, auto-detecting zlib (header check: CM = 8, CINFO ≤ 7, header
/// checksum divisible by 31) and gzip (`1F 8B`). Anything else is
/// [`CryptoError::UnknownCompression`].
///
/// Bounded: as soon as the output would exceed `max_output_bytes` the result is
/// [`CryptoError::InflateTooLarge`], and no more than `max_output_bytes + 1` bytes of output are
/// ever allocated. A truncated or corrupt stream (including a bad Adler-32 / CRC-32) is
/// [`CryptoError::Inflate`]; bytes after the end of the stream are ignored, as Java's
/// `InflaterInputStream` ignores them. An empty result is [`CryptoError::EmptyBody`].
pub fn inflate(data: &[u8], max_output_bytes: usize) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    inflate_into(data, max_output_bytes, &mut out)?;
    Ok(out)
}

/// [`inflate`] into a caller-visible buffer (which must start empty), so tests can check how much
/// was allocated on failure.
fn inflate_into(data: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), CryptoError> {
    match data {
        [0x1f, 0x8b, ..] => inflate_gzip(data, max, out)?,
        [b0, b1, ..] if is_zlib_header(*b0, *b1) => {
            inflate_raw_bounded(data, true, max, out)?;
        }
        _ => return Err(CryptoError::UnknownCompression),
    }
    if out.is_empty() {
        return Err(CryptoError::EmptyBody);
    }
    Ok(())
}

/// RFC 1950 header check: deflate method, window ≤ 32 KiB, FCHECK makes the header a multiple of 31.
fn is_zlib_header(b0: u8, b1: u8) -> bool {
    b0 & 0x0f == 8 && b0 >> 4 <= 7 && (u16::from(b0) << 8 | u16::from(b1)) % 31 == 0
}

/// Inflates one gzip member (RFC 1952), checking its CRC-32 and length trailer.
fn inflate_gzip(data: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let header_len = gzip_header_len(data)?;
    let body = &data[header_len..];
    let consumed = inflate_raw_bounded(body, false, max, out)?;
    let trailer = body
        .get(consumed..)
        .and_then(|rest| rest.get(..8))
        .ok_or_else(|| CryptoError::Inflate("gzip trailer missing".into()))?;
    let mut crc = Crc::new();
    crc.update(out);
    let expected_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let expected_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if crc.sum() != expected_crc || crc.amount() != expected_len {
        return Err(CryptoError::Inflate(
            "gzip CRC-32 or length mismatch".into(),
        ));
    }
    Ok(())
}

/// Length of a gzip member header, validating what it can.
fn gzip_header_len(data: &[u8]) -> Result<usize, CryptoError> {
    const FHCRC: u8 = 0x02;
    const FEXTRA: u8 = 0x04;
    const FNAME: u8 = 0x08;
    const FCOMMENT: u8 = 0x10;
    let bad = |what: &str| CryptoError::Inflate(format!("bad gzip header: {what}"));
    let fixed = data.get(..10).ok_or_else(|| bad("too short"))?;
    if fixed[2] != 8 {
        return Err(bad("compression method is not deflate"));
    }
    let flags = fixed[3];
    if flags & 0xe0 != 0 {
        return Err(bad("reserved flags set"));
    }
    let mut pos = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = data
            .get(pos..pos + 2)
            .ok_or_else(|| bad("truncated extra field"))?;
        pos += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let rest = data.get(pos..).ok_or_else(|| bad("truncated"))?;
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| bad("unterminated name or comment"))?;
            pos += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    if pos > data.len() {
        return Err(bad("truncated"));
    }
    Ok(pos)
}

/// Inflates a zlib (`zlib_header`) or raw deflate stream into `out` (empty on entry), never
/// letting `out` grow past `max + 1` bytes. Returns how many input bytes the stream used.
fn inflate_raw_bounded(
    input: &[u8],
    zlib_header: bool,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<usize, CryptoError> {
    /// First allocation for small bodies; later growth doubles, capped at the bound.
    const INITIAL_CAPACITY: usize = 4096;
    let limit = max.saturating_add(1);
    let too_large = CryptoError::InflateTooLarge { max_bytes: max };
    let mut stream = Decompress::new(zlib_header);
    loop {
        if out.len() > max {
            return Err(too_large);
        }
        if out.len() == out.capacity() {
            let wanted = out
                .capacity()
                .saturating_mul(2)
                .max(INITIAL_CAPACITY)
                .max(input.len().saturating_mul(4))
                .min(limit);
            out.reserve_exact(wanted - out.len());
        }
        let consumed = usize::try_from(stream.total_in()).unwrap_or(input.len());
        let rest = input.get(consumed..).unwrap_or_default();
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let status = stream
            .decompress_vec(rest, out, FlushDecompress::None)
            .map_err(|e| CryptoError::Inflate(e.to_string()))?;
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError => {
                let progressed = stream.total_in() != in_before || stream.total_out() != out_before;
                if !progressed && out.len() < out.capacity() {
                    // Room to write and nothing happened: the input ran out mid-stream.
                    return Err(CryptoError::Inflate("truncated stream".into()));
                }
            }
        }
    }
    if out.len() > max {
        return Err(too_large);
    }
    Ok(usize::try_from(stream.total_in()).unwrap_or(input.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use std::io::Write as _;

    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/handshake-bind-push.json"
    );
    /// Hex chars of the 13-byte MPush packet header in `raw_hex`.
    const HEADER_HEX_CHARS: usize = 26;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn connection() -> serde_json::Value {
        let text = std::fs::read_to_string(VECTORS).expect("read golden vectors");
        let json: serde_json::Value = serde_json::from_str(&text).expect("parse golden vectors");
        json["connections"][0].clone()
    }

    fn hex_field(value: &serde_json::Value, field: &str) -> Vec<u8> {
        let text = value[field]
            .as_str()
            .unwrap_or_else(|| panic!("missing {field}"));
        hex::decode(text).expect("hex")
    }

    fn key16(value: &serde_json::Value, field: &str) -> [u8; 16] {
        hex_field(value, field).try_into().expect("16 bytes")
    }

    /// The frame's body: `raw_hex` without the 13-byte header.
    fn frame_body(frame: &serde_json::Value) -> Vec<u8> {
        let raw = frame["raw_hex"].as_str().expect("raw_hex");
        hex::decode(&raw[HEADER_HEX_CHARS..]).expect("hex")
    }

    // --- golden vectors ------------------------------------------------------------------

    #[test]
    fn rsa_decrypts_captured_handshake() {
        let conn = connection();
        let frame = &conn["frames"][0];
        let ciphertext = frame_body(frame);
        assert_eq!(ciphertext.len(), 128);
        let plain = ServerRsaKey::mpush_default()
            .decrypt(&mut rng(1), &ciphertext)
            .unwrap();
        assert_eq!(plain, hex_field(frame, "plaintext_body_hex"));
        assert!(hex::encode(&plain).starts_with("00086465766963652d41"));
    }

    #[test]
    fn aes_matches_captured_frames() {
        let conn = connection();
        let keys = &conn["key_material"];
        let client_key = key16(keys, "clientKey");
        let server_key = key16(keys, "serverKey");
        let session_key = key16(keys, "sessionKey");
        let iv = key16(keys, "iv");
        assert_eq!(mix_keys(&client_key, &server_key), session_key);

        let check = |cipher: &AesCipher, frame: &serde_json::Value| {
            let body = frame_body(frame);
            let plain = hex_field(frame, "plaintext_body_hex");
            assert_eq!(cipher.decrypt(&body).unwrap(), plain);
            assert_eq!(cipher.encrypt(&plain), body);
            let mut reused = vec![0xAA];
            cipher.encrypt_into(&plain, &mut reused);
            assert_eq!(reused[0], 0xAA);
            assert_eq!(&reused[1..], &body[..]);
        };
        let frames = &conn["frames"];
        check(&AesCipher::new(client_key, iv), &frames[1]); // HANDSHAKE-ok
        let session = AesCipher::new(session_key, iv);
        for index in [2, 4, 11, 15] {
            check(&session, &frames[index]);
        }
    }

    #[test]
    fn zlib_matches_java_deflater_byte_for_byte() {
        let conn = connection();
        let keys = &conn["key_material"];
        let session = AesCipher::new(key16(keys, "sessionKey"), key16(keys, "iv"));
        // Frame 9: compressed by the Java server; frame 13: by the Java client SDK.
        for index in [9, 13] {
            let frame = &conn["frames"][index];
            let zlib = hex_field(frame, "decrypted_zlib_hex");
            let plain = hex_field(frame, "plaintext_body_hex");
            assert_eq!(session.decrypt(&frame_body(frame)).unwrap(), zlib);
            assert_eq!(inflate(&zlib, 64 * 1024).unwrap(), plain);
            assert_eq!(
                deflate_zlib(&plain),
                zlib,
                "frame {index}: zlib bytes differ"
            );
            assert_eq!(session.encrypt(&deflate_zlib(&plain)), frame_body(frame));
        }
    }

    // --- RSA -------------------------------------------------------------------------------

    #[test]
    fn default_public_key_round_trips_exactly() {
        let server = ServerRsaKey::mpush_default();
        let client = ClientRsaKey::mpush_default();
        assert_eq!(server.public_key(), client);
        assert_eq!(
            client,
            ClientRsaKey::from_x509_base64(MPUSH_DEFAULT_PUBLIC_KEY_B64).unwrap()
        );
        assert_eq!(client.to_x509_base64(), MPUSH_DEFAULT_PUBLIC_KEY_B64);
        assert_eq!(server.modulus_bytes(), 128);
        assert_eq!(client.modulus_bytes(), 128);
    }

    #[test]
    fn rsa_round_trip_multi_block() {
        let server = ServerRsaKey::mpush_default();
        let client = server.public_key();
        let mut rng = rng(2);
        for len in 0..400usize {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let ciphertext = client.encrypt(&mut rng, &plain).unwrap();
            assert_eq!(ciphertext.len(), len.div_ceil(117) * 128);
            assert_eq!(server.decrypt(&mut rng, &ciphertext).unwrap(), plain);
        }
    }

    #[test]
    fn rsa_encryption_is_randomised() {
        let client = ClientRsaKey::mpush_default();
        let mut rng = rng(3);
        let a = client.encrypt(&mut rng, b"hello").unwrap();
        let b = client.encrypt(&mut rng, b"hello").unwrap();
        assert_ne!(a, b);
    }

    /// Minimal DER writer for building keys by hand.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            len @ 0..=0x7f => out.push(len as u8),
            len @ 0x80..=0xff => out.extend([0x81, len as u8]),
            len => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn der_uint(be: &[u8]) -> Vec<u8> {
        let mut digits: Vec<u8> = be.iter().copied().skip_while(|&b| b == 0).collect();
        if digits.first().is_none_or(|&b| b & 0x80 != 0) {
            digits.insert(0, 0);
        }
        tlv(0x02, &digits)
    }

    /// MPush's default private key as it ships: PKCS#8 around a PKCS#1 key with only n and d.
    fn mpush_odd_pkcs8_der() -> Vec<u8> {
        let n = hex::decode(MPUSH_DEFAULT_N_HEX).unwrap();
        let d = hex::decode(MPUSH_DEFAULT_D_HEX).unwrap();
        let zero = der_uint(&[]);
        let mut pkcs1 = zero.clone(); // version
        pkcs1.extend(der_uint(&n));
        pkcs1.extend(&zero); // e
        pkcs1.extend(der_uint(&d));
        for _ in 0..5 {
            pkcs1.extend(&zero); // p, q, dp, dq, qinv
        }
        let pkcs1 = tlv(0x30, &pkcs1);
        let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        let mut algorithm = tlv(0x06, &rsa_oid);
        algorithm.extend([0x05, 0x00]);
        let mut info = zero;
        info.extend(tlv(0x30, &algorithm));
        info.extend(tlv(0x04, &pkcs1));
        tlv(0x30, &info)
    }

    #[test]
    fn loads_mpush_odd_default_private_key() {
        use rsa::pkcs8::DecodePrivateKey as _;
        let der = mpush_odd_pkcs8_der();
        // A strict parser refuses it, which is why we parse the structure ourselves.
        assert!(RsaPrivateKey::from_pkcs8_der(&der).is_err());

        let b64 = STANDARD.encode(&der);
        // Wrapped at 64 columns with CRLF and indentation, as it may appear in a config file.
        let wrapped: String = b64
            .as_bytes()
            .chunks(64)
            .map(|line| format!("  {}\r\n", std::str::from_utf8(line).unwrap()))
            .collect();
        let default = ServerRsaKey::mpush_default();
        for text in [b64.as_str(), wrapped.as_str()] {
            let key = ServerRsaKey::from_pkcs8_base64(text).unwrap();
            assert_eq!(key.inner.n(), default.inner.n());
            assert_eq!(key.inner.d(), default.inner.d());
            assert_eq!(key.inner.e(), &BigUint::from(65_537u32));
            assert_eq!(key.public_key(), ClientRsaKey::mpush_default());
            assert!(key.inner.dp().is_some(), "CRT values precomputed");
        }
    }

    #[test]
    fn default_key_exports_complete_pkcs8() {
        use rsa::pkcs8::DecodePrivateKey as _;
        let key = ServerRsaKey::mpush_default();
        let b64 = key.to_pkcs8_base64();
        let der = STANDARD.decode(&b64).unwrap();
        // A strict parser accepts the exported, complete key.
        let strict = RsaPrivateKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(strict.n(), key.inner.n());
        let reloaded = ServerRsaKey::from_pkcs8_base64(&b64).unwrap();
        assert_eq!(reloaded.inner, key.inner);
    }

    #[test]
    fn loads_from_bytes_and_hex() {
        let default = ServerRsaKey::mpush_default();
        let n = hex::decode(MPUSH_DEFAULT_N_HEX).unwrap();
        let d = hex::decode(MPUSH_DEFAULT_D_HEX).unwrap();
        for e in [&[][..], &[0][..], &[0x01, 0x00, 0x01][..]] {
            let key = ServerRsaKey::from_components(&n, e, &d).unwrap();
            assert_eq!(key.inner, default.inner);
        }
        let key = ServerRsaKey::from_hex_components(
            &MPUSH_DEFAULT_N_HEX.to_lowercase(),
            "0x010001",
            MPUSH_DEFAULT_D_HEX,
        )
        .unwrap();
        assert_eq!(key.public_key(), default.public_key());
        let key = ServerRsaKey::from_hex_components(MPUSH_DEFAULT_N_HEX, "", MPUSH_DEFAULT_D_HEX)
            .unwrap();
        assert_eq!(key.public_key(), default.public_key());
    }

    #[test]
    fn bad_keys_are_errors_not_panics() {
        let n = hex::decode(MPUSH_DEFAULT_N_HEX).unwrap();
        let d = hex::decode(MPUSH_DEFAULT_D_HEX).unwrap();
        let mut even_n = n.clone();
        *even_n.last_mut().unwrap() &= 0xfe;
        let cases: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = vec![
            (vec![], vec![], vec![]),
            (vec![0], vec![0], vec![0]),
            (vec![1], vec![], vec![1]),
            (vec![0xff], vec![3], vec![1]),
            (n.clone(), vec![], vec![]),
            (n.clone(), vec![], vec![1]),
            (n.clone(), vec![3], d.clone()),
            (n.clone(), vec![1, 0, 3], d.clone()),
            (even_n, vec![], d.clone()),
            (d.clone(), vec![], n.clone()),
            (n.clone(), vec![], n.clone()),
            (vec![0xff; 600], vec![], vec![1]),
        ];
        for (n, e, d) in cases {
            assert!(
                matches!(
                    ServerRsaKey::from_components(&n, &e, &d),
                    Err(CryptoError::BadKey(_))
                ),
                "n={} e={} d={}",
                hex::encode(&n),
                hex::encode(&e),
                hex::encode(&d)
            );
        }
        assert!(ServerRsaKey::from_hex_components("xyz", "", "1").is_err());
        for text in ["", "not base64!", "AAAA", MPUSH_DEFAULT_PUBLIC_KEY_B64] {
            assert!(ServerRsaKey::from_pkcs8_base64(text).is_err(), "{text}");
        }
        for text in ["", "###", "AAAA"] {
            assert!(ClientRsaKey::from_x509_base64(text).is_err(), "{text}");
        }
        let mut rng = rng(4);
        assert!(ServerRsaKey::generate(&mut rng, 512).is_err());
        assert!(ServerRsaKey::generate(&mut rng, 8192).is_err());
    }

    #[test]
    fn generated_key_round_trips() {
        let mut rng = rng(5);
        let key = ServerRsaKey::generate(&mut rng, 1024).unwrap();
        assert_eq!(key.modulus_bytes(), 128);
        let reloaded = ServerRsaKey::from_pkcs8_base64(&key.to_pkcs8_base64()).unwrap();
        assert_eq!(reloaded.inner, key.inner);
        let public = ClientRsaKey::from_x509_base64(&key.public_key().to_x509_base64()).unwrap();
        assert_eq!(public, key.public_key());
        let plain = vec![0x5a; 300];
        let ciphertext = public.encrypt(&mut rng, &plain).unwrap();
        assert_eq!(reloaded.decrypt(&mut rng, &ciphertext).unwrap(), plain);
        // The default key cannot read it.
        assert_eq!(
            ServerRsaKey::mpush_default().decrypt(&mut rng, &ciphertext),
            Err(CryptoError::RsaDecrypt)
        );
        // n, e, d alone are enough to rebuild it.
        let from_parts = ServerRsaKey::from_components(
            &key.inner.n().to_bytes_be(),
            &key.inner.e().to_bytes_be(),
            &key.inner.d().to_bytes_be(),
        )
        .unwrap();
        assert_eq!(from_parts.public_key(), key.public_key());
        assert_eq!(from_parts.decrypt(&mut rng, &ciphertext).unwrap(), plain);
    }

    #[test]
    fn rsa_decrypt_rejects_bad_input() {
        let key = ServerRsaKey::mpush_default();
        let mut rng = rng(6);
        assert_eq!(
            key.decrypt(&mut rng, &[0u8; 127]),
            Err(CryptoError::BadCiphertextLength {
                len: 127,
                block_bytes: 128
            })
        );
        assert_eq!(key.decrypt(&mut rng, &[]), Ok(Vec::new()));
        assert_eq!(
            key.decrypt(&mut rng, &[0xff; 128]),
            Err(CryptoError::RsaDecrypt)
        );
        let mut random = [0u8; 256];
        rng.fill_bytes(&mut random);
        assert_eq!(key.decrypt(&mut rng, &random), Err(CryptoError::RsaDecrypt));
    }

    #[test]
    fn every_decryption_path_gives_the_same_answer() {
        let mut rng = rng(8);
        let mut keys = vec![ServerRsaKey::mpush_default()];
        keys.push(ServerRsaKey::generate(&mut rng, 1024).unwrap());
        keys.push(ServerRsaKey::generate(&mut rng, 2048).unwrap());
        #[cfg(not(madsim))]
        assert_eq!(
            keys[0].openssl.is_some(),
            openssl_refuses_bad_padding(),
            "OpenSSL decrypts wherever it refuses bad padding"
        );
        for key in &keys {
            let public = key.public_key();
            for len in [0, 1, 16, 117, 118, 300] {
                let mut plain = vec![0u8; len];
                rng.fill_bytes(&mut plain);
                let ciphertext = public.encrypt(&mut rng, &plain).unwrap();
                assert_eq!(key.decrypt(&mut rng, &ciphertext).unwrap(), plain);
                assert_eq!(key.decrypt_pure(&mut rng, &ciphertext).unwrap(), plain);
            }
            // Blocks below the modulus that are not PKCS#1 v1.5 (random, or a good block
            // with a byte flipped): refused by both, never a made-up plaintext.
            let good = public.encrypt(&mut rng, b"handshake").unwrap();
            for i in 0..64 {
                let mut block = good.clone();
                if i < 32 {
                    let at = 1 + i % (block.len() - 1);
                    block[at] ^= 0x40;
                } else {
                    rng.fill_bytes(&mut block);
                    block[0] = 0; // below n
                }
                let fast = key.decrypt(&mut rng, &block);
                let pure = key.decrypt_pure(&mut rng, &block);
                assert_eq!(fast, pure, "block {i}");
            }
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cipher = AesCipher::new([0xab; 16], [0xcd; 16]);
        let text = format!("{cipher:?}");
        assert!(!text.contains("ab") && !text.contains("171"), "{text}");
        let key = ServerRsaKey::mpush_default();
        let text = format!("{key:?}");
        assert!(text.contains("1024") && text.contains("a084f096"), "{text}");
        let d_start = MPUSH_DEFAULT_D_HEX[2..12].to_lowercase();
        assert!(!text.to_lowercase().contains(&d_start), "{text}");
    }

    // --- AES -------------------------------------------------------------------------------

    #[test]
    fn aes_rejects_bad_ciphertext() {
        let cipher = AesCipher::new([1; 16], [2; 16]);
        assert_eq!(cipher.decrypt(&[]), Err(CryptoError::AesDecrypt));
        assert_eq!(cipher.decrypt(&[0; 15]), Err(CryptoError::AesDecrypt));
        assert_eq!(cipher.decrypt(&[0; 17]), Err(CryptoError::AesDecrypt));
        // Random blocks almost never end in valid padding; find ones that don't, deterministically.
        let mut rng = rng(7);
        let mut rejected = 0;
        for _ in 0..64 {
            let mut block = [0u8; 16];
            rng.fill_bytes(&mut block);
            if cipher.decrypt(&block).is_err() {
                rejected += 1;
            }
        }
        assert!(
            rejected >= 48,
            "only {rejected} of 64 random blocks rejected"
        );
        // The first block of an encrypted 16-zero-byte body decrypts to zeros: padding byte 0.
        let mut forged = cipher.encrypt(&[0u8; 16]);
        forged.truncate(16);
        assert_eq!(cipher.decrypt(&forged), Err(CryptoError::AesDecrypt));
    }

    #[test]
    fn aes_lengths() {
        let cipher = AesCipher::new([9; 16], [8; 16]);
        for len in 0..50 {
            let ciphertext = cipher.encrypt(&vec![3; len]);
            assert_eq!(ciphertext.len(), AesCipher::ciphertext_len(len));
            assert_eq!(ciphertext.len(), (len / 16 + 1) * 16);
        }
        assert_eq!(cipher.key(), &[9; 16]);
        assert_eq!(cipher.iv(), &[8; 16]);
    }

    // --- compression -----------------------------------------------------------------------

    #[test]
    fn inflate_stops_at_the_bound() {
        let bomb = deflate_zlib(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 2048);
        let mut out = Vec::new();
        assert_eq!(
            inflate_into(&bomb, 10_240, &mut out),
            Err(CryptoError::InflateTooLarge { max_bytes: 10_240 })
        );
        assert!(out.capacity() <= 10_241, "allocated {}", out.capacity());
        assert_eq!(
            inflate(&gzip(&vec![0u8; 1 << 20]), 10_240),
            Err(CryptoError::InflateTooLarge { max_bytes: 10_240 })
        );
        // Exactly at the bound is fine; one past is not.
        let data = vec![7u8; 10_240];
        assert_eq!(inflate(&deflate_zlib(&data), 10_240).unwrap(), data);
        assert_eq!(
            inflate(&deflate_zlib(&data), 10_239),
            Err(CryptoError::InflateTooLarge { max_bytes: 10_239 })
        );
        assert_eq!(inflate(&gzip(&data), 10_240).unwrap(), data);
        assert!(inflate(&deflate_zlib(b"x"), usize::MAX).is_ok());
    }

    #[test]
    fn gzip_round_trip_and_detection() {
        let data = b"hello from an iOS client, hello from an iOS client".repeat(20);
        let gz = gzip(&data);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_eq!(inflate(&gz, 1 << 16).unwrap(), data);
        let zlib = deflate_zlib(&data);
        assert_eq!(zlib[0], 0x78);
        assert_eq!(inflate(&zlib, 1 << 16).unwrap(), data);
        // Trailing bytes after the stream are ignored, like Java's InflaterInputStream.
        let mut trailing = zlib.clone();
        trailing.extend_from_slice(b"junk");
        assert_eq!(inflate(&trailing, 1 << 16).unwrap(), data);
        // gzip with a file name and comment in the header.
        let mut named = Vec::new();
        {
            let mut encoder = flate2::GzBuilder::new()
                .filename("body.bin")
                .comment("test")
                .extra(vec![1, 2, 3])
                .write(&mut named, Compression::default());
            encoder.write_all(&data).unwrap();
            encoder.finish().unwrap();
        }
        assert_eq!(inflate(&named, 1 << 16).unwrap(), data);
    }

    #[test]
    fn inflate_rejects_garbage() {
        assert_eq!(inflate(&[], 100), Err(CryptoError::UnknownCompression));
        assert_eq!(inflate(&[0x78], 100), Err(CryptoError::UnknownCompression));
        assert_eq!(
            inflate(b"plain text body", 100),
            Err(CryptoError::UnknownCompression)
        );
        assert_eq!(
            inflate(&deflate_zlib(&[]), 100),
            Err(CryptoError::EmptyBody)
        );
        assert_eq!(inflate(&gzip(&[]), 100), Err(CryptoError::EmptyBody));
        let data = b"some body that compresses somewhat, somewhat, somewhat".repeat(10);
        let zlib = deflate_zlib(&data);
        let gz = gzip(&data);
        for cut in [2, 3, zlib.len() / 2, zlib.len() - 4, zlib.len() - 1] {
            assert!(
                matches!(inflate(&zlib[..cut], 1 << 16), Err(CryptoError::Inflate(_))),
                "zlib cut at {cut}"
            );
        }
        for cut in [2, 9, 10, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
            assert!(
                matches!(inflate(&gz[..cut], 1 << 16), Err(CryptoError::Inflate(_))),
                "gzip cut at {cut}"
            );
        }
        let mut bad_adler = zlib.clone();
        *bad_adler.last_mut().unwrap() ^= 1;
        assert!(matches!(
            inflate(&bad_adler, 1 << 16),
            Err(CryptoError::Inflate(_))
        ));
        let mut bad_crc = gz.clone();
        let crc_at = gz.len() - 8;
        bad_crc[crc_at] ^= 1;
        assert!(matches!(
            inflate(&bad_crc, 1 << 16),
            Err(CryptoError::Inflate(_))
        ));
        assert!(inflate(&[0x78, 0x9c, 0xff, 0xff, 0xff, 0xff], 100).is_err());
    }

    // --- properties ------------------------------------------------------------------------

    proptest! {
        /// What a client encrypts (OpenSSL's exponentiation on this file's padding, outside
        /// the simulator) the server opens with either back end, across block boundaries.
        #[test]
        fn rsa_client_blocks_open_on_the_server(
            plain in proptest::collection::vec(any::<u8>(), 0..300),
            seed in any::<u64>(),
        ) {
            let client = ClientRsaKey::mpush_default();
            #[cfg(not(madsim))]
            prop_assert!(client.openssl.is_some(), "OpenSSL takes MPush's public key");
            let server = ServerRsaKey::mpush_default();
            let mut r = rng(seed);
            let ciphertext = client.encrypt(&mut r, &plain).unwrap();
            let block = client.modulus_bytes();
            let chunk = block - RSA_PKCS1_OVERHEAD_BYTES;
            prop_assert_eq!(ciphertext.len(), plain.len().div_ceil(chunk) * block);
            prop_assert_eq!(&server.decrypt_pure(&mut r, &ciphertext).unwrap(), &plain);
            prop_assert_eq!(&server.decrypt(&mut r, &ciphertext).unwrap(), &plain);
        }

        #[test]
        fn aes_round_trips(
            key in any::<[u8; 16]>(),
            iv in any::<[u8; 16]>(),
            plain in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let cipher = AesCipher::new(key, iv);
            let ciphertext = cipher.encrypt(&plain);
            prop_assert_eq!(ciphertext.len(), AesCipher::ciphertext_len(plain.len()));
            prop_assert_eq!(cipher.decrypt(&ciphertext).unwrap(), plain);
        }

        #[test]
        fn zlib_and_gzip_round_trip(plain in proptest::collection::vec(any::<u8>(), 1..2000)) {
            let bound = plain.len().max(1);
            prop_assert_eq!(&inflate(&deflate_zlib(&plain), bound).unwrap(), &plain);
            prop_assert_eq!(&inflate(&gzip(&plain), bound).unwrap(), &plain);
            if plain.len() > 1 {
                prop_assert_eq!(
                    inflate(&deflate_zlib(&plain), plain.len() - 1),
                    Err(CryptoError::InflateTooLarge { max_bytes: plain.len() - 1 })
                );
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            prefix in prop_oneof![
                Just(Vec::new()),
                Just(vec![0x78, 0x9c]),
                Just(vec![0x78, 0x01]),
                Just(vec![0x1f, 0x8b, 0x08]),
                Just(vec![0x1f, 0x8b, 0x08, 0x1f]),
            ],
            max in 0usize..4096,
            key in any::<[u8; 16]>(),
        ) {
            let mut input = prefix;
            input.extend_from_slice(&data);
            if let Ok(out) = inflate(&input, max) {
                prop_assert!(!out.is_empty() && out.len() <= max);
            }
            let _ = AesCipher::new(key, key).decrypt(&input);
        }

        #[test]
        fn key_parsers_never_panic(text in "[A-Za-z0-9+/= \n]{0,300}", raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ServerRsaKey::from_pkcs8_base64(&text);
            let _ = ClientRsaKey::from_x509_base64(&text);
            let _ = ServerRsaKey::from_pkcs8_der(&raw);
            let _ = ServerRsaKey::from_components(&raw, &[], &raw);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn rsa_decrypt_of_arbitrary_bytes_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            seed in any::<u64>(),
        ) {
            let key = ServerRsaKey::mpush_default();
            let _ = key.decrypt(&mut rng(seed), &data);
        }
    }
}
