/*
 * Hand-written MPI Jacobi stencil: the baseline `dsm-bench jacobi --json` compares dsm with.
 *
 * The same computation as the suite's dsm version (benches/src/suites/jacobi/versus_mpi/node.rs):
 * an N x N grid of doubles, rows split in blocks (rank r owns rows r*N/P .. (r+1)*N/P), the
 * edges (rows 0 and N-1, columns 0 and N-1) fixed at their initial values, and each
 * iteration computing every interior cell from the previous grid as
 *     0.25 * (above + below + left + right)
 * summed in that order, so that the results are bit for bit those of the dsm version. Before
 * each iteration a rank swaps its boundary rows with its neighbours (MPI_Sendrecv).
 *
 * Build: mpicc -O2 -o jacobi-mpi jacobi.c
 * Run:   mpirun -np 4 ./jacobi-mpi [N [ITERATIONS]]   (default 2048 100)
 *
 * Prints one JSON line from rank 0: the slowest rank's time over the iterations (allocation
 * and initialisation excluded), and two checksums of the final grid: `checksum_bits`, the
 * wrapping 64-bit sum of every cell's bit pattern (exact, and independent of summation
 * order), and `checksum_sum`, the plain sum of the cells (for people; order-dependent in its
 * last bits).
 */
#include <mpi.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The starting temperature of cell (i, j): the suite's `initial`. */
static double initial(long i, long j)
{
    if (i == 0)
        return 100.0;
    return (double)((i * 31 + j * 17) % 97);
}

/* Rows first-1 .. last (halo rows included) of one grid, row-major. */
struct block {
    long n;
    long first;
    long last;
    double *cells;
};

/* Row i of the grid (first-1 <= i <= last). */
static double *row(const struct block *b, long i)
{
    return b->cells + (i - (b->first - 1)) * b->n;
}

static int block_init(struct block *b, long n, long first, long last)
{
    b->n = n;
    b->first = first;
    b->last = last;
    b->cells = malloc((size_t)(last - first + 2) * (size_t)n * sizeof(double));
    if (b->cells == NULL)
        return -1;
    for (long i = first - 1; i <= last; i++) {
        if (i < 0 || i >= n)
            continue;
        double *r = row(b, i);
        for (long j = 0; j < n; j++)
            r[j] = initial(i, j);
    }
    return 0;
}

/* Swaps boundary rows with the neighbours: my first row goes up while the row above mine
 * comes down into the top halo, and the reverse at the bottom. */
static void exchange(struct block *b, int rank, int size)
{
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL;
    int down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;
    int n = (int)b->n;
    MPI_Sendrecv(row(b, b->first), n, MPI_DOUBLE, up, 0, row(b, b->last), n, MPI_DOUBLE, down,
                 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Sendrecv(row(b, b->last - 1), n, MPI_DOUBLE, down, 1, row(b, b->first - 1), n,
                 MPI_DOUBLE, up, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

/* One iteration over the interior rows of the block. */
static void step(const struct block *from, struct block *to)
{
    long n = from->n;
    long start = from->first > 1 ? from->first : 1;
    long end = from->last < n - 1 ? from->last : n - 1;
    for (long i = start; i < end; i++) {
        const double *above = row(from, i - 1);
        const double *mid = row(from, i);
        const double *below = row(from, i + 1);
        double *out = row(to, i);
        for (long j = 1; j < n - 1; j++)
            out[j] = 0.25 * (above[j] + below[j] + mid[j - 1] + mid[j + 1]);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long n = argc > 1 ? atol(argv[1]) : 2048;
    long iters = argc > 2 ? atol(argv[2]) : 100;
    if (n < 3 || iters < 0 || size > n) {
        if (rank == 0)
            fprintf(stderr, "jacobi-mpi: need N >= 3, N >= ranks, ITERATIONS >= 0\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    long first = rank * n / size;
    long last = (rank + 1) * n / size;
    struct block grids[2];
    if (block_init(&grids[0], n, first, last) != 0 || block_init(&grids[1], n, first, last) != 0) {
        fprintf(stderr, "jacobi-mpi: rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }

    MPI_Barrier(MPI_COMM_WORLD);
    double started = MPI_Wtime();
    for (long t = 0; t < iters; t++) {
        struct block *from = &grids[t % 2];
        struct block *to = &grids[(t + 1) % 2];
        exchange(from, rank, size);
        step(from, to);
    }
    double elapsed = MPI_Wtime() - started;

    const struct block *result = &grids[iters % 2];
    uint64_t bits = 0;
    double sum = 0.0;
    for (long i = first; i < last; i++) {
        const double *r = row(result, i);
        for (long j = 0; j < n; j++) {
            uint64_t b;
            memcpy(&b, &r[j], sizeof b);
            bits += b;
            sum += r[j];
        }
    }
    double slowest;
    uint64_t all_bits;
    double all_sum;
    MPI_Reduce(&elapsed, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(&bits, &all_bits, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(&sum, &all_sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("{\"n\":%ld,\"iterations\":%ld,\"ranks\":%d,\"seconds\":%.6f,"
               "\"us_per_iteration\":%.3f,\"checksum_bits\":\"%016" PRIx64 "\","
               "\"checksum_sum\":%.17g}\n",
               n, iters, size, slowest, iters > 0 ? slowest * 1e6 / (double)iters : 0.0,
               all_bits, all_sum);
        fflush(stdout);
    }
    free(grids[0].cells);
    free(grids[1].cells);
    MPI_Finalize();
    return 0;
}
