//! Shared-memory matrix multiply: C = A × B with rows of C split across nodes; every node
//! reads all of B. Rank 0 checks C against a single-process product.
//!
//! ```sh
//! dsm-run -n 4 -- target/release/examples/matmul --n 96 --mode sequential
//! ```

use dsm::Node;

mod common;

fn main() {
    common::exit_on_error(run);
}

fn a_value(i: usize, j: usize) -> f64 {
    ((i * 7 + j * 3) % 11) as f64 - 5.0
}

fn b_value(i: usize, j: usize) -> f64 {
    ((i * 5 + j * 13) % 17) as f64 * 0.5
}

fn run() -> dsm::Result<()> {
    let n: usize = common::number("--n", 96);
    let consistency = common::mode();
    let node = Node::join(dsm::Config::from_env()?)?;
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let a = node.alloc::<f64>("matmul-a", n * n, consistency)?;
    let b = node.alloc::<f64>("matmul-b", n * n, consistency)?;
    let c = node.alloc::<f64>("matmul-c", n * n, consistency)?;
    let rows = rank * n / size..(rank + 1) * n / size;
    for i in rows.clone() {
        for j in 0..n {
            a.set(i * n + j, a_value(i, j));
            b.set(i * n + j, b_value(i, j));
        }
    }
    node.barrier()?;
    for i in rows {
        for j in 0..n {
            let sum = (0..n).map(|k| a.get(i * n + k) * b.get(k * n + j)).sum();
            c.set(i * n + j, sum);
        }
    }
    node.barrier()?;
    if rank == 0 {
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..n).map(|k| a_value(i, k) * b_value(k, j)).sum();
                worst = worst.max((c.get(i * n + j) - want).abs());
            }
        }
        if worst != 0.0 {
            println!("matmul check FAILED: max |diff| = {worst}");
            return Err(dsm::Error::Protocol("matmul result differs".into()));
        }
        println!("matmul check passed: {n}x{n}, max |diff| = 0");
    }
    println!("rank {rank}: {} (matrix c: {})", node.stats(), c.stats());
    node.leave()
}
