//! The CLI's tables (comfy-table): no borders, each column at least as
//! wide as it always was and as wide as its widest cell, columns apart by
//! one or two spaces, numbers right-aligned, no trailing spaces.
//!
//! The cells are text as given: tenant text must be escaped by the caller
//! (`plugbus::text::escape`, [`crate::ops::cell`]), so that a row stays one
//! line and no escape sequence reaches the terminal.

use comfy_table::{CellAlignment, ColumnConstraint, Table, Width, presets};

/// One column of a table.
#[derive(Clone, Copy)]
pub struct Column {
    /// Its header.
    pub header: &'static str,
    /// The least width of its text.
    pub width: u16,
    /// Whether its text is right-aligned (numbers).
    pub right: bool,
    /// The spaces between it and the next column.
    pub gap: u16,
}

impl Column {
    /// A left-aligned column at least `width` wide, one space before the
    /// next.
    pub const fn left(header: &'static str, width: u16) -> Self {
        Self {
            header,
            width,
            right: false,
            gap: 1,
        }
    }

    /// A right-aligned column at least `width` wide, one space before the
    /// next.
    pub const fn right(header: &'static str, width: u16) -> Self {
        Self {
            header,
            width,
            right: true,
            gap: 1,
        }
    }

    /// The column with `gap` spaces before the next.
    pub const fn gap(self, gap: u16) -> Self {
        Self { gap, ..self }
    }
}

/// The lines of a table of `columns` and `rows` (each row one cell per
/// column), header first.
pub fn lines(columns: &[Column], rows: impl IntoIterator<Item = Vec<String>>) -> Vec<String> {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(columns.iter().map(|c| c.header).collect::<Vec<_>>());
    for row in rows {
        table.add_row(row);
    }
    for (column, spec) in table.column_iter_mut().zip(columns) {
        column.set_padding((0, spec.gap));
        column.set_cell_alignment(if spec.right {
            CellAlignment::Right
        } else {
            CellAlignment::Left
        });
        // The width includes the padding.
        column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(
            spec.width.saturating_add(spec.gap),
        )));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

/// Prints a table of `columns` and `rows` to stdout.
pub fn print(columns: &[Column], rows: impl IntoIterator<Item = Vec<String>>) {
    for line in lines(columns, rows) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of the hand-aligned `format!` widths it replaces.
    #[test]
    fn lays_out_as_the_formats_did() {
        let columns = [
            Column::right("seq", 8).gap(2),
            Column::left("plugin", 20),
            Column::right("attempts", 8).gap(2),
            Column::left("last failure", 0).gap(0),
        ];
        let rows = [
            vec!["12".into(), "mixed".into(), "3".into(), "trap: boom".into()],
            vec!["7".into(), "a".repeat(22), "10".into(), String::new()],
        ];
        assert_eq!(
            lines(&columns, rows[..1].to_vec()),
            [
                format!(
                    "{:>8}  {:<20} {:>8}  last failure",
                    "seq", "plugin", "attempts"
                ),
                format!("{:>8}  {:<20} {:>8}  trap: boom", "12", "mixed", "3"),
            ]
        );
        // A wider cell widens its column, header and every row, where the
        // formats pushed that one row out of line.
        assert_eq!(
            lines(&columns, rows),
            [
                format!(
                    "{:>8}  {:<22} {:>8}  last failure",
                    "seq", "plugin", "attempts"
                ),
                format!("{:>8}  {:<22} {:>8}  trap: boom", "12", "mixed", "3"),
                format!("{:>8}  {} {:>8}", "7", "a".repeat(22), "10"),
            ]
        );
    }

    /// A table without rows is its header.
    #[test]
    fn no_rows_is_the_header() {
        let columns = [Column::left("tenant", 20), Column::left("until", 0).gap(0)];
        assert_eq!(
            lines(&columns, Vec::<Vec<String>>::new()),
            [format!("{:<20} until", "tenant")]
        );
    }
}
