//! Micro-benchmark (not a test): SHA-256 throughput of the two implementations the gateway
//! links, over the chunk sizes its data paths hash, on one core.
//!
//!     cargo run --release -p portcullis-gateway --example hash_bench [MiB]

use std::time::Instant;

use sha2::Digest;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;
    for chunk in [32 * 1024, 128 * 1024, 256 * 1024] {
        let data: Vec<u8> = (0..chunk).map(|i| (i * 7 + 3) as u8).collect();
        let n = total / chunk;
        for round in 0..2 {
            let t = Instant::now();
            let mut h = sha2::Sha256::new();
            for _ in 0..n {
                h.update(&data);
            }
            let a = h.finalize();
            let sha2_gbs = (n * chunk) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = Instant::now();
            let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for _ in 0..n {
                c.update(&data);
            }
            let b = c.finish();
            let awslc_gbs = (n * chunk) as f64 / t.elapsed().as_secs_f64() / 1e9;
            assert_eq!(a.as_slice(), b.as_ref(), "the two must agree");
            if round == 1 {
                println!(
                    "chunk {:>6} KiB: sha2 {sha2_gbs:.2} GB/s, aws-lc {awslc_gbs:.2} GB/s ({:.2}x)",
                    chunk / 1024,
                    awslc_gbs / sha2_gbs
                );
            }
        }
    }
}
