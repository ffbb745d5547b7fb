//! The confusion matrix as a picture: rows are gold intents, columns predictions, each cell
//! shaded by the share of its row and labelled with its count.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

/// TrueType fonts tried in order (Debian's fonts-dejavu-core first).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for p in FONT_PATHS {
                if let Ok(bytes) = std::fs::read(p) {
                    // plotters keeps a &'static reference; the font lives for the process.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
            }
            Err(format!(
                "no TrueType font found for the confusion matrix picture (looked for {}); \
                 install one, e.g. `apt-get install fonts-dejavu-core`",
                FONT_PATHS.join(", ")
            ))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

pub fn draw(path: &Path, labels: &[String], matrix: &[Vec<usize>]) -> Result<()> {
    if labels.len() != matrix.len() || matrix.iter().any(|r| r.len() != labels.len()) {
        bail!("confusion matrix is not square with one row per label");
    }
    ensure_font()?;
    let n = labels.len().max(1) as i32;
    let cell = if n > 30 { 22 } else { 28 };
    let margin_left = 150;
    let margin_top = 150;
    let size = (margin_left + n * cell + 20, margin_top + n * cell + 40);
    let root = BitMapBackend::new(path, (size.0 as u32, size.1 as u32)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow!("drawing failed: {e}"))?;
    let label_font = ("sans-serif", 12).into_font().color(&BLACK);
    let count_font = ("sans-serif", 10).into_font();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing failed: {e:?}");

    root.draw(&Text::new(
        "gold (rows) vs predicted (columns)",
        (margin_left, size.1 - 25),
        ("sans-serif", 14).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    for (i, label) in labels.iter().enumerate() {
        let y = margin_top + i as i32 * cell + cell / 2;
        root.draw(&Text::new(
            label.as_str(),
            (margin_left - 6, y),
            label_font.clone().pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(err)?;
        let x = margin_left + i as i32 * cell + cell / 2;
        root.draw(&Text::new(
            label.as_str(),
            (x, margin_top - 6),
            label_font
                .clone()
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    for (g, row) in matrix.iter().enumerate() {
        let total: usize = row.iter().sum::<usize>().max(1);
        for (p, &count) in row.iter().enumerate() {
            let share = count as f64 / total as f64;
            let x0 = margin_left + p as i32 * cell;
            let y0 = margin_top + g as i32 * cell;
            // Correct cells in blue, errors in red; intensity is the share of the gold row.
            let (r, gch, b) = if g == p {
                (0.0, 0.35, 0.8)
            } else {
                (0.85, 0.1, 0.1)
            };
            let mix = |c: f64| (255.0 - (255.0 - c * 255.0) * share) as u8;
            let colour = RGBColor(mix(r), mix(gch), mix(b));
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                colour.filled(),
            ))
            .map_err(err)?;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                RGBColor(220, 220, 220),
            ))
            .map_err(err)?;
            if count > 0 {
                let text_colour = if share > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    count.to_string(),
                    (x0 + cell / 2, y0 + cell / 2),
                    count_font
                        .clone()
                        .color(&text_colour)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(err)?;
            }
        }
    }
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cm.png");
        let labels = vec![
            "refund".to_string(),
            "price".to_string(),
            "greeting".to_string(),
        ];
        draw(&p, &labels, &[vec![5, 1, 0], vec![0, 4, 2], vec![0, 0, 7]]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // IHDR width/height, big-endian at offsets 16 and 20.
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        assert_eq!(w, 150 + 3 * 28 + 20);
    }

    #[test]
    fn rejects_a_ragged_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let err = draw(&dir.path().join("x.png"), &["a".into()], &[vec![1, 2]]).unwrap_err();
        assert!(err.to_string().contains("not square"));
    }
}
