//! The measuring loop the benchmark examples share.

use std::time::Instant;

/// Median microseconds per call of `f`, over 15 batches sized to take ~20 ms each. With
/// `BENCH_FILTER` set, only cases whose name contains it run; with `BENCH_REPEAT=N`, each runs
/// N times untimed (to profile one case, e.g. under `valgrind --tool=callgrind`).
pub(crate) fn bench(name: &str, mut f: impl FnMut()) {
    if std::env::var("BENCH_FILTER").is_ok_and(|want| !name.contains(&want)) {
        return;
    }
    if let Some(n) = std::env::var("BENCH_REPEAT").ok().and_then(|n| n.parse::<u32>().ok()) {
        (0..n).for_each(|_| f());
        return;
    }
    let mut per_batch = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        if t.elapsed().as_micros() > 20_000 || per_batch > 1 << 20 {
            break;
        }
        per_batch *= 2;
    }
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(per_batch)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    println!("{name:<58} {:>9.2} µs", samples[samples.len() / 2]);
}
