//! How the dense-layer kernels (fp32 in `dense.rs`, int8 in `int8.rs`) cut one layer's output
//! into work items for the spin pool, and walk an item's rows in register tiles.
//!
//! Both kernels pack their weights in the same column blocks (64 columns, then 16-column
//! remainders) and differ only in what one register tile computes, so the split lives here
//! once and each kernel passes its tile functions.

use super::spin_pool::SpinPool;

/// Output columns of a wide block: four 16-lane AVX-512 registers per tile row.
pub const WIDE: usize = 64;
/// Output columns of a narrow block (one register); `n` must be a multiple of it.
pub const NARROW: usize = 16;

/// One work item: output rows `row0..row0 + rows` by columns `col0..col0 + width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub row0: usize,
    pub rows: usize,
    pub col0: usize,
    pub width: usize,
}

/// (first column, width) of each column block of an `n`-wide output, in packing order:
/// `n / 64` wide blocks, then the 16-column ones.
pub fn column_blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let wide = n / WIDE;
    let narrow = (n % WIDE) / NARROW;
    (0..wide)
        .map(|b| (b * WIDE, WIDE))
        .chain((0..narrow).map(move |b| (wide * WIDE + b * NARROW, NARROW)))
}

/// Rows per work item: as many rows of `k` elements as fit in `budget` elements (so the item's
/// activations stay in L2 beside one weight block), rounded down to a multiple of the tile
/// height `multiple`, and at least one tile.
pub fn panel_rows(budget: usize, k: usize, multiple: usize) -> usize {
    ((budget / k.max(1)) / multiple * multiple).max(multiple)
}

/// Runs `work` on every (row panel x column block) item of a `rows x n` output, on the spin
/// pool. Items cover the output exactly once, so kernels that write only their item's part of
/// `y` never race.
///
/// Not candle's barrier pool: on a shared machine a pool worker that is not scheduled holds the
/// caller at the barrier (measured: batch-1 passes 4x slower with two threads than with one).
/// Not rayon either: its workers sleep between the ~16 calls of a pass and waking them cost
/// ~20 % of a batch-1 pass. See `spin_pool`.
pub fn run_items(rows: usize, n: usize, panel_rows: usize, work: &(dyn Fn(Item) + Sync)) {
    let blocks: Vec<(usize, usize)> = column_blocks(n).collect();
    run_blocks(rows, &blocks, panel_rows, work);
}

/// [`run_items`] over column blocks of the caller's choosing, `(first column, width)` each.
pub fn run_blocks(
    rows: usize,
    blocks: &[(usize, usize)],
    panel_rows: usize,
    work: &(dyn Fn(Item) + Sync),
) {
    let panels = rows.div_ceil(panel_rows);
    let item = |i: usize| {
        let (panel, block) = (i / blocks.len(), i % blocks.len());
        let row0 = panel * panel_rows;
        let (col0, width) = blocks[block];
        work(Item {
            row0,
            rows: panel_rows.min(rows - row0),
            col0,
            width,
        })
    };
    SpinPool::global().run(panels * blocks.len(), &item);
}

/// Calls `tile(first_row, height)` over rows `row0..row0 + rows` in tiles of `max` rows, the
/// last one shorter.
#[inline(always)]
pub fn row_tiles(row0: usize, rows: usize, max: usize, mut tile: impl FnMut(usize, usize)) {
    let end = row0 + rows;
    let mut r = row0;
    while r < end {
        let height = max.min(end - r);
        tile(r, height);
        r += height;
    }
}

/// One register tile of a kernel: `(job, first row, first column, the block's packed weights)`.
pub type TileFn<J, W> = unsafe fn(&J, usize, usize, *const W);

/// Computes one item with a kernel's tile functions, indexed by tile height - 1: `wide` for a
/// 64-column block, `narrow` for a 16-column one. The kernels keep one function per height
/// (their accumulators are named registers, see `dense.rs`), so the height picks the function.
///
/// # Safety
/// The tile functions' own contract (CPU features, pointers covering the job) for every tile
/// of the item; `w` is the item's block of packed weights.
#[inline(always)]
pub unsafe fn tile_item<J, W>(
    job: &J,
    it: Item,
    w: *const W,
    wide: &[TileFn<J, W>],
    narrow: &[TileFn<J, W>],
) {
    let tiles = if it.width == WIDE { wide } else { narrow };
    row_tiles(it.row0, it.rows, tiles.len(), |r, h| {
        // SAFETY: forwarded from the caller; the tile stays inside the item.
        unsafe { tiles[h - 1](job, r, it.col0, w) }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn blocks_cover_the_columns_wide_first() {
        assert_eq!(
            column_blocks(176).collect::<Vec<_>>(),
            vec![(0, 64), (64, 64), (128, 16), (144, 16), (160, 16)]
        );
        assert_eq!(column_blocks(16).collect::<Vec<_>>(), vec![(0, 16)]);
        assert_eq!(column_blocks(0).count(), 0);
    }

    #[test]
    fn panels_are_whole_tiles_within_the_budget() {
        assert_eq!(panel_rows(1000, 10, 6), 96);
        assert_eq!(panel_rows(1000, 10, 12), 96);
        // A row wider than the budget still gets one tile.
        assert_eq!(panel_rows(100, 1000, 6), 6);
        assert_eq!(panel_rows(100, 0, 4), 100);
    }

    #[test]
    fn items_cover_every_output_element_once() {
        for (rows, n, panel) in [(1, 16, 6), (7, 80, 6), (13, 400, 12), (100, 1536, 24)] {
            let seen = Mutex::new(vec![0u8; rows * n]);
            run_items(rows, n, panel, &|it: Item| {
                assert!(it.rows <= panel && it.rows > 0);
                let mut s = seen.lock().unwrap();
                for r in it.row0..it.row0 + it.rows {
                    for c in it.col0..it.col0 + it.width {
                        s[r * n + c] += 1;
                    }
                }
            });
            assert!(
                seen.into_inner().unwrap().iter().all(|&v| v == 1),
                "rows {rows} n {n} panel {panel}"
            );
        }
    }

    #[test]
    fn row_tiles_are_full_height_then_the_rest() {
        let mut got = Vec::new();
        row_tiles(3, 14, 6, |r, h| got.push((r, h)));
        assert_eq!(got, vec![(3, 6), (9, 6), (15, 2)]);
        got.clear();
        row_tiles(0, 0, 4, |r, h| got.push((r, h)));
        assert!(got.is_empty());
    }
}
