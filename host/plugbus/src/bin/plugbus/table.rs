//! The CLI's tables (comfy-table): no borders, a fixed header, one line
//! per row always, columns apart by one or two spaces, numbers
//! right-aligned, no trailing spaces and no colour (comfy-table is built
//! without its terminal styling), so that the output reads the same on a
//! terminal and in a pipe.
//!
//! Every cell is escaped here ([`plugbus::text::escape`]: control
//! characters, escape sequences, newlines), whoever wrote it, so no
//! tenant text can break a row or reach the terminal raw; a cell wider
//! than its column's most is cut to it, ending in `…` (a manifest error's
//! caret diagram, a long type). `--json` shows the whole text.

use std::borrow::Cow;

use comfy_table::{CellAlignment, ColumnConstraint, Row, Table, Width, presets};

/// The most bytes of a cell kept before it is cut to its column: a bound
/// on the work of a huge message, well beyond any column's width.
const CELL_BYTES: usize = 4096;

/// Splits nothing: the escaped text of a cell has no NUL, so a cell is cut
/// at its column's width, not at the last space before it.
const NO_DELIMITER: char = '\0';

/// One column of a table.
#[derive(Clone, Copy)]
pub struct Column {
    /// Its header.
    pub header: &'static str,
    /// The least width of its text.
    pub min: u16,
    /// The most width of its text: a wider cell is cut, ending in `…`.
    pub max: u16,
    /// Whether its text is right-aligned (numbers).
    pub right: bool,
    /// The spaces between it and the next column.
    pub gap: u16,
}

impl Column {
    /// A left-aligned column of text at least `min` and at most `max`
    /// wide, one space before the next.
    pub const fn text(header: &'static str, min: u16, max: u16) -> Self {
        Self {
            header,
            min,
            max,
            right: false,
            gap: 1,
        }
    }

    /// A right-aligned column of numbers at least `min` wide, one space
    /// before the next.
    pub const fn number(header: &'static str, min: u16) -> Self {
        Self {
            header,
            min,
            // A u64 has at most 20 digits.
            max: if min > 20 { min } else { 20 },
            right: true,
            gap: 1,
        }
    }

    /// The column with `gap` spaces before the next.
    pub const fn gap(self, gap: u16) -> Self {
        Self { gap, ..self }
    }
}

/// A cell's text, escaped: one line, nothing a terminal acts on.
fn escaped(cell: &str) -> Cow<'_, str> {
    plugbus::text::escape(cell, CELL_BYTES)
}

/// The lines of a table of `columns` and `rows` (each row one cell per
/// column), header first.
pub fn lines<R, C>(columns: &[Column], rows: R) -> Vec<String>
where
    R: IntoIterator<Item = Vec<C>>,
    C: AsRef<str>,
{
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_delimiter(NO_DELIMITER);
    table.set_header(columns.iter().map(|c| c.header).collect::<Vec<_>>());
    for cells in rows {
        let mut row = Row::from(
            cells
                .iter()
                .map(|cell| escaped(cell.as_ref()).into_owned())
                .collect::<Vec<_>>(),
        );
        // A cell wider than its column would wrap; the rest of it is cut
        // off, ending in `…`.
        row.max_height(1);
        table.add_row(row);
    }
    for (column, spec) in table.column_iter_mut().zip(columns) {
        column.set_padding((0, spec.gap));
        column.set_cell_alignment(if spec.right {
            CellAlignment::Right
        } else {
            CellAlignment::Left
        });
        // The widths include the padding.
        column.set_constraint(ColumnConstraint::Boundaries {
            lower: Width::Fixed(spec.min.saturating_add(spec.gap)),
            upper: Width::Fixed(spec.max.max(spec.min).saturating_add(spec.gap)),
        });
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

/// Prints a table of `columns` and `rows` to stdout.
pub fn print<R, C>(columns: &[Column], rows: R)
where
    R: IntoIterator<Item = Vec<C>>,
    C: AsRef<str>,
{
    for line in lines(columns, rows) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 4] = [
        Column::number("seq", 8).gap(2),
        Column::text("plugin", 20, 30),
        Column::number("attempts", 8).gap(2),
        Column::text("last failure", 0, 24).gap(0),
    ];

    /// The layout of the hand-aligned `format!` widths it replaced, and a
    /// wider cell widening its column in every row, header too.
    #[test]
    fn lays_out_in_columns() {
        let rows = [
            vec!["12", "mixed", "3", "trap: boom"],
            vec!["7", "a-plugin-name-of-22-ch", "10", ""],
        ];
        assert_eq!(
            lines(&COLUMNS, rows[..1].to_vec()),
            [
                format!(
                    "{:>8}  {:<20} {:>8}  last failure",
                    "seq", "plugin", "attempts"
                ),
                format!("{:>8}  {:<20} {:>8}  trap: boom", "12", "mixed", "3"),
            ]
        );
        assert_eq!(
            lines(&COLUMNS, rows),
            [
                format!(
                    "{:>8}  {:<22} {:>8}  last failure",
                    "seq", "plugin", "attempts"
                ),
                format!("{:>8}  {:<22} {:>8}  trap: boom", "12", "mixed", "3"),
                format!("{:>8}  a-plugin-name-of-22-ch {:>8}", "7", "10"),
            ]
        );
    }

    /// A cell past its column's most is cut to it with `…`; lines within a
    /// cell, and control characters, are escaped onto the one line.
    #[test]
    fn cuts_and_escapes_each_cell_to_one_line() {
        let long = "p".repeat(40);
        let rows = [vec![
            "1",
            long.as_str(),
            "2",
            "error: expected `=`\n  |\n1 | subscribe \u{1b}[31m\r",
        ]];
        let lines = lines(&COLUMNS, rows);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert_eq!(
            lines[1],
            format!(
                "{:>8}  {}… {:>8}  error: expected `=`\\n  …",
                "1",
                "p".repeat(29),
                "2"
            )
        );
        assert!(!lines[1].contains('\u{1b}'), "{lines:?}");
        assert_eq!(
            lines[0],
            format!(
                "{:>8}  {:<30} {:>8}  last failure",
                "seq", "plugin", "attempts"
            )
        );
    }

    /// A table without rows is its header.
    #[test]
    fn no_rows_is_the_header() {
        let columns = [
            Column::text("tenant", 20, 64),
            Column::text("until", 0, 30).gap(0),
        ];
        assert_eq!(
            lines(&columns, Vec::<Vec<String>>::new()),
            [format!("{:<20} until", "tenant")]
        );
    }
}
