//! The README's first program: a test keeps this file, after these two comment lines,
//! identical to the README's first rust block, and runs it on 2 nodes.

use dsm::{Config, Consistency, Node};

fn main() -> dsm::Result<()> {
    // One process per node: `dsm-run -n 4 -- target/release/examples/quickstart` (or mpirun,
    // srun). A process started on its own is a cluster of one.
    let node = Node::join(Config::from_env()?)?; // blocks until every node has joined
    let (rank, size) = (node.rank() as usize, node.size() as usize);

    // Collective: every node allocates the same regions, at the same address everywhere.
    let n = 1 << 16;
    let grid = node.alloc::<f64>("grid", n, Consistency::Release)?;
    let counter = node.alloc::<u64>("counter", 1, Consistency::Release)?;

    // Each node writes its share in bulk (a plain slice: no unsafe, no per-element calls).
    let mine = rank * n / size..(rank + 1) * n / size;
    let values: Vec<f64> = mine.clone().map(|i| i as f64).collect();
    grid.write_slice(mine.start, &values)?;
    {
        let _guard = node.lock(7).acquire()?; // Ricart–Agrawala; released on drop
        counter.set(0, counter.get(0) + 1);
    }
    node.barrier()?; // every node's writes before it are visible after it

    // Every node reads every share, fetched from their homes on first touch.
    let mut all = vec![0.0; n];
    grid.read_slice(0, &mut all)?;
    assert!(all.iter().enumerate().all(|(i, v)| *v == i as f64));
    assert_eq!(counter.get(0), size as u64);
    println!("rank {rank}: quickstart passed; {}", node.stats());
    node.leave() // collective; the regions need no explicit free
}
