//! Nodes render horizontal stripes of a Mandelbrot set into one shared PGM image through
//! `dsm::views`: rank 0 creates the file (on its file system: it is the file's master) and
//! writes the header; every node defines the view of its stripe, renders into it and merges
//! it; rank 0 then reopens the file read-only and checks every pixel.
//!
//! ```sh
//! DSM_VIEWS_ROOT=/tmp dsm-run -n 4 -- target/release/examples/views --width 800 --height 600
//! # then open /tmp/mandelbrot.pgm with any image viewer
//! ```

use dsm::views::{Access, SharedFile};
use dsm::{Node, Result};

mod common;

fn main() {
    common::exit_on_error(run);
}

/// Iterations of z := z² + c before the point counts as inside (its pixel is black).
const MAX_ITERATIONS: u32 = 255;

/// The grey level of pixel (x, y) of a `width`×`height` image of the set.
fn pixel(x: usize, y: usize, width: usize, height: usize) -> u8 {
    let cx = -2.2 + 3.0 * x as f64 / width as f64;
    let cy = -1.2 + 2.4 * y as f64 / height as f64;
    let (mut zx, mut zy, mut n) = (0.0f64, 0.0f64, 0);
    while n < MAX_ITERATIONS && zx * zx + zy * zy <= 4.0 {
        let t = zx * zx - zy * zy + cx;
        zy = 2.0 * zx * zy + cy;
        zx = t;
        n += 1;
    }
    u8::try_from(255 - n).expect("n is at most 255")
}

fn run() -> Result<()> {
    let width: usize = common::number("--width", 640);
    let height: usize = common::number("--height", 480);
    let path = common::arg("--out").unwrap_or_else(|| "mandelbrot.pgm".to_owned());
    let header = format!("P5\n{width} {height}\n255\n");
    let len = (header.len() + width * height) as u64;
    let node = Node::join(dsm::Config::from_env()?)?;
    let (rank, size) = (node.rank() as usize, node.size() as usize);

    // Rank 0 opens first, so it is the master; the others open once the file exists.
    let file = if rank == 0 {
        let file = SharedFile::create(&node, &path, len)?;
        let mut head = file.map_view(file.define_view(0, header.len() as u64)?)?;
        head.as_mut_slice().copy_from_slice(header.as_bytes());
        head.release_with_merge()?;
        node.barrier()?;
        file
    } else {
        node.barrier()?;
        SharedFile::open(&node, &path, Access::ReadWrite)?
    };
    let rows = rank * height / size..(rank + 1) * height / size;
    let offset = (header.len() + rows.start * width) as u64;
    let view = file.define_view(offset, (rows.len() * width) as u64)?;
    let mut stripe = file.map_view(view)?;
    for (k, value) in stripe.as_mut_slice().iter_mut().enumerate() {
        *value = pixel(k % width, rows.start + k / width, width, height);
    }
    stripe.release_with_merge()?;
    drop(stripe);
    file.close_with_merge()?;
    node.barrier()?; // every stripe is merged
    if rank == 0 {
        check(&node, &path, &header, width, height)?;
    }
    node.leave()
}

/// Reads the merged image back through a read-only open and compares every pixel.
fn check(node: &Node, path: &str, header: &str, width: usize, height: usize) -> Result<()> {
    let file = SharedFile::open(node, path, Access::Read)?;
    let image = file.map_view(file.define_view(0, file.len())?)?;
    let (head, pixels) = image.as_slice().split_at(header.len());
    let wrong = (0..width * height)
        .filter(|&k| pixels[k] != pixel(k % width, k / width, width, height))
        .count();
    if head != header.as_bytes() || wrong > 0 {
        return Err(dsm::Error::Protocol(format!(
            "views check FAILED: {wrong} wrong pixels, header ok: {}",
            head == header.as_bytes()
        )));
    }
    println!("views check passed: {width}x{height} image in {path}, every pixel right");
    Ok(())
}
