//! Decrypts the same HANDSHAKE-sized RSA blocks with every library and prints ops/s.
//!
//! One op is one 128-byte block (the 1024-bit PKCS#1 v1.5 private-key operation); a HANDSHAKE
//! body of a real client is one or two blocks. Every library decrypts to the same bytes (checked
//! before timing). `cargo run --release -- [seconds per library] [rounds]`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use pushgate_core::crypto::{ClientRsaKey, ServerRsaKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

type Decrypt<'a> = Box<dyn FnMut(&[u8]) -> Vec<u8> + 'a>;

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(1.0, |s| s.parse().expect("seconds"));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("rounds"));

    let key = ServerRsaKey::mpush_default();
    let der = base64::engine::general_purpose::STANDARD
        .decode(key.to_pkcs8_base64())
        .unwrap();
    let public = ClientRsaKey::mpush_default();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let plains: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 100]).collect();
    let blocks: Vec<Vec<u8>> = plains
        .iter()
        .map(|p| public.encrypt(&mut rng, p).unwrap())
        .collect();

    let ossl = openssl::rsa::Rsa::private_key_from_der(
        &openssl::pkey::PKey::private_key_from_pkcs8(&der)
            .unwrap()
            .rsa()
            .unwrap()
            .private_key_to_der()
            .unwrap(),
    )
    .unwrap();
    let ossl_pkey = openssl::pkey::PKey::private_key_from_pkcs8(&der).unwrap();
    let aws = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&der)
        .map_err(|e| format!("{e:?}"))
        .and_then(|k| aws_lc_rs::rsa::Pkcs1PrivateDecryptingKey::new(k).map_err(|e| format!("{e:?}")));
    if let Err(e) = &aws {
        println!("aws-lc-rs refuses the 1024-bit key: {e}");
    }
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_der_compat(&der);

    let mut libs: Vec<(&str, Decrypt)> = Vec::new();
    {
        let key = key.clone();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        libs.push(("rsa 0.9 (blinded, CRT)", Box::new(move |b| key.decrypt(&mut rng, b).unwrap())));
    }
    {
        let k = rsa_key.clone();
        libs.push((
            "rsa 0.9 (unblinded, CRT)",
            Box::new(move |b| k.decrypt(rsa::Pkcs1v15Encrypt, b).unwrap()),
        ));
    }
    {
        let k = &ossl;
        libs.push((
            "openssl RSA_private_decrypt",
            Box::new(move |b| {
                let mut out = vec![0u8; k.size() as usize];
                let n = k.private_decrypt(b, &mut out, openssl::rsa::Padding::PKCS1).unwrap();
                out.truncate(n);
                out
            }),
        ));
    }
    {
        let k = &ossl_pkey;
        libs.push((
            "openssl EVP_PKEY_decrypt",
            Box::new(move |b| {
                let mut ctx = openssl::pkey_ctx::PkeyCtx::new(k).unwrap();
                ctx.decrypt_init().unwrap();
                ctx.set_rsa_padding(openssl::rsa::Padding::PKCS1).unwrap();
                let mut out = Vec::new();
                ctx.decrypt_to_vec(b, &mut out).unwrap();
                out
            }),
        ));
    }
    if let Ok(k) = &aws {
        libs.push((
            "aws-lc-rs Pkcs1PrivateDecryptingKey",
            Box::new(move |b| {
                let mut out = vec![0u8; k.min_output_size()];
                let n = k.decrypt(b, &mut out).unwrap().len();
                out.truncate(n);
                out
            }),
        ));
    }

    for (name, f) in libs.iter_mut() {
        for (p, b) in plains.iter().zip(&blocks) {
            assert_eq!(&f(b), p, "{name} decrypts to other bytes");
        }
    }
    println!("all libraries decrypt the {} blocks to the same bytes", blocks.len());
    for round in 1..=rounds {
        for (name, f) in libs.iter_mut() {
            let started = Instant::now();
            let mut ops = 0u64;
            while started.elapsed() < Duration::from_secs_f64(secs) {
                for b in &blocks[..8] {
                    std::hint::black_box(f(b));
                }
                ops += 8;
            }
            let rate = ops as f64 / started.elapsed().as_secs_f64();
            println!("round {round}: {name:<36} {rate:>9.0} ops/s  ({:.1} µs/op)", 1e6 / rate);
        }
    }
}

trait CompatDer {
    fn from_pkcs8_der_compat(der: &[u8]) -> rsa::RsaPrivateKey;
}
impl CompatDer for rsa::RsaPrivateKey {
    fn from_pkcs8_der_compat(der: &[u8]) -> rsa::RsaPrivateKey {
        use rsa::pkcs8::DecodePrivateKey as _;
        let mut k = rsa::RsaPrivateKey::from_pkcs8_der(der).unwrap();
        k.precompute().unwrap();
        k
    }
}
