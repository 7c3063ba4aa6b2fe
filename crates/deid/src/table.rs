//! The PS3.15 Table E.1-1 action table, as data.
//!
//! The table lives in `data/ps3.15-e1-1.csv`, derived from the standard's machine-readable
//! scrape (2024b, all option columns) plus the basic-profile rows added up to 2026c. It is
//! embedded at build time, so a build needs nothing outside the repository.
//! [`derive_action_table_csv`] regenerates it; a test checks the committed copy against
//! `../shared/deid` whenever that folder is present.

use std::collections::HashMap;
use std::sync::LazyLock;

use dicom_core::Tag;

use crate::DeidOption;
use crate::error::DeidError;

/// The edition string written into De-identification Method (0012,0063).
pub const TABLE_EDITION: &str = "PS3.15 2024b Table E.1-1 + 2026c basic rows";

const EMBEDDED_TABLE: &str = include_str!("../data/ps3.15-e1-1.csv");

/// Option columns of Table E.1-1, in the order they appear in the derived CSV.
pub const OPTION_COLUMNS: [(&str, DeidOption); 10] = [
    ("rtn_safe_private", DeidOption::RetainSafePrivate),
    ("rtn_uids", DeidOption::RetainUids),
    ("rtn_device_identity", DeidOption::RetainDeviceIdentity),
    (
        "rtn_institution_identity",
        DeidOption::RetainInstitutionIdentity,
    ),
    (
        "rtn_patient_characteristics",
        DeidOption::RetainPatientCharacteristics,
    ),
    ("rtn_long_full_dates", DeidOption::RetainLongFullDates),
    (
        "rtn_long_modified_dates",
        DeidOption::RetainLongModifiedDates,
    ),
    ("clean_descriptors", DeidOption::CleanDescriptors),
    (
        "clean_structured_content",
        DeidOption::CleanStructuredContent,
    ),
    ("clean_graphics", DeidOption::CleanGraphics),
];

/// One action code of Table E.1-1 (Table E.1-1a), combined codes included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionCode {
    /// D: replace with a non-zero-length dummy value.
    D,
    /// Z: replace with a zero-length value.
    Z,
    /// X: remove.
    X,
    /// K: keep (sequences: keep and clean their items).
    K,
    /// C: clean (replace values of similar meaning that do not identify).
    C,
    /// U: replace with a consistent, non-identifying UID.
    U,
    /// Z/D: Z unless the attribute is Type 1, then D.
    ZD,
    /// X/Z: X unless Type 2, then Z.
    XZ,
    /// X/D: X unless Type 1, then D.
    XD,
    /// X/Z/D: X unless Type 2 (Z) or Type 1 (D).
    XZD,
    /// X/Z/U*: X or Z, or, for sequences holding UIDs, keep them with every UID remapped.
    XZU,
}

impl ActionCode {
    /// Parses a code as written in the table.
    pub fn parse(code: &str) -> Option<Self> {
        Some(match code.trim() {
            "D" => Self::D,
            "Z" => Self::Z,
            "X" => Self::X,
            "K" => Self::K,
            "C" => Self::C,
            "U" => Self::U,
            "Z/D" => Self::ZD,
            "X/Z" => Self::XZ,
            "X/D" => Self::XD,
            "X/Z/D" => Self::XZD,
            "X/Z/U*" => Self::XZU,
            _ => return None,
        })
    }

    /// Resolves a combined code without knowing the attribute's Type in its IOD.
    ///
    /// The choice is the conservative one: wherever the attribute *may* be Type 1 the
    /// dummy (D) keeps the object valid; where it may be Type 2 but not 1, an empty value
    /// (Z); the reference sequences under X/Z/U* are kept with their UIDs remapped, because
    /// dropping them breaks the links between objects of a study.
    pub fn resolve(self) -> Action {
        match self {
            Self::D | Self::ZD | Self::XD | Self::XZD => Action::Dummy,
            Self::Z | Self::XZ => Action::Empty,
            Self::X => Action::Remove,
            Self::K => Action::Keep,
            Self::C => Action::Clean,
            Self::U | Self::XZU => Action::RemapUid,
        }
    }
}

/// What the de-identifier does to one attribute, after options and combined codes resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Dummy,
    Empty,
    Remove,
    Keep,
    Clean,
    RemapUid,
}

/// A row of the action table: the basic-profile code and each option's override.
#[derive(Debug, Clone)]
pub struct TableRow {
    pub name: String,
    pub basic: ActionCode,
    /// Option overrides, indexed like [`OPTION_COLUMNS`].
    pub options: [Option<ActionCode>; 10],
}

impl TableRow {
    /// The code that applies under the given set of options: the last enabled option
    /// column that has a code wins, otherwise the basic profile.
    pub fn code_for(&self, options: &[DeidOption]) -> ActionCode {
        let mut code = self.basic;
        for (i, (_, opt)) in OPTION_COLUMNS.iter().enumerate() {
            if let Some(c) = self.options[i]
                && options.contains(opt)
            {
                code = c;
            }
        }
        code
    }
}

/// The whole action table: fixed tags, the repeating-group masks and the private row.
#[derive(Debug)]
pub struct ActionTable {
    fixed: HashMap<Tag, TableRow>,
    curve: TableRow,
    overlay_data: TableRow,
    overlay_comments: TableRow,
    private: TableRow,
}

static TABLE: LazyLock<ActionTable> = LazyLock::new(|| {
    ActionTable::parse(EMBEDDED_TABLE).expect("the embedded action table is checked by a unit test")
});

impl ActionTable {
    /// The table embedded in this build.
    pub fn embedded() -> &'static ActionTable {
        &TABLE
    }

    /// Parses a derived table (the format written by [`derive_action_table_csv`]).
    pub fn parse(csv_text: &str) -> Result<Self, DeidError> {
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let bad = |msg: String| DeidError::ActionTable(msg);
        let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
        let col = |name: &str| column_index(&headers, name, "action table");
        let tag_col = col("tag")?;
        let name_col = col("name")?;
        let basic_col = col("basic")?;
        let option_cols = OPTION_COLUMNS
            .iter()
            .map(|(name, _)| col(name))
            .collect::<Result<Vec<_>, _>>()?;

        let mut fixed = HashMap::new();
        let (mut curve, mut overlay_data, mut overlay_comments, mut private) =
            (None, None, None, None);
        for record in reader.records() {
            let record = record.map_err(|e| bad(e.to_string()))?;
            let tag = &record[tag_col];
            let basic = ActionCode::parse(&record[basic_col])
                .ok_or_else(|| bad(format!("{tag}: bad basic code {:?}", &record[basic_col])))?;
            let mut options = [None; 10];
            for (slot, &c) in options.iter_mut().zip(&option_cols) {
                let cell = record[c].trim();
                if !cell.is_empty() {
                    *slot = Some(
                        ActionCode::parse(cell)
                            .ok_or_else(|| bad(format!("{tag}: bad option code {cell:?}")))?,
                    );
                }
            }
            let row = TableRow {
                name: record[name_col].to_string(),
                basic,
                options,
            };
            match tag {
                "50XX,XXXX" => curve = Some(row),
                "60XX,3000" => overlay_data = Some(row),
                "60XX,4000" => overlay_comments = Some(row),
                "private" => private = Some(row),
                _ => {
                    let parsed = parse_tag(tag).ok_or_else(|| bad(format!("bad tag {tag:?}")))?;
                    if fixed.insert(parsed, row).is_some() {
                        return Err(bad(format!("duplicate tag {tag}")));
                    }
                }
            }
        }
        let need =
            |row: Option<TableRow>, what: &str| row.ok_or_else(|| bad(format!("no {what} row")));
        Ok(Self {
            fixed,
            curve: need(curve, "50XX,XXXX")?,
            overlay_data: need(overlay_data, "60XX,3000")?,
            overlay_comments: need(overlay_comments, "60XX,4000")?,
            private: need(private, "private")?,
        })
    }

    /// Number of fixed-tag rows.
    pub fn fixed_len(&self) -> usize {
        self.fixed.len()
    }

    /// The row governing a tag, if the table lists it (fixed tag, repeating group or private).
    pub fn row(&self, tag: Tag) -> Option<&TableRow> {
        if tag.group() % 2 == 1 {
            return Some(&self.private);
        }
        if let Some(row) = self.fixed.get(&tag) {
            return Some(row);
        }
        match tag.group() & 0xFF00 {
            0x5000 => Some(&self.curve),
            0x6000 if tag.element() == 0x3000 => Some(&self.overlay_data),
            0x6000 if tag.element() == 0x4000 => Some(&self.overlay_comments),
            _ => None,
        }
    }
}

/// The position of a named column, or an error naming the table that lacks it.
fn column_index(headers: &csv::StringRecord, name: &str, table: &str) -> Result<usize, DeidError> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| DeidError::ActionTable(format!("{table} lacks column {name}")))
}

fn parse_tag(text: &str) -> Option<Tag> {
    let (g, e) = text.split_once(',')?;
    Some(Tag(
        u16::from_str_radix(g, 16).ok()?,
        u16::from_str_radix(e, 16).ok()?,
    ))
}

/// Derives the embedded action table from the two CSV files under `shared/deid`:
/// Table E.1-1 of PS3.15 2024b (621 rows, every option column) and the basic-profile rows
/// added up to 2026c (whose option cells are unknown, so left empty: the basic action rules).
pub fn derive_action_table_csv(
    e11_2024b: &str,
    additions_2026c: &str,
) -> Result<String, DeidError> {
    let bad = |msg: String| DeidError::ActionTable(msg);
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["tag", "name", "edition", "basic"];
    header.extend(OPTION_COLUMNS.iter().map(|(n, _)| *n));
    out.write_record(&header).map_err(|e| bad(e.to_string()))?;

    let normalise_tag = |raw: &str| -> String {
        let t = raw.trim();
        if t.contains("odd group") {
            return "private".to_string();
        }
        t.trim_start_matches('(')
            .trim_end_matches(')')
            .to_ascii_uppercase()
    };

    let mut seen = std::collections::HashSet::new();
    let mut reader = csv::Reader::from_reader(e11_2024b.as_bytes());
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let idx = |name: &str| column_index(&headers, name, "2024b table");
    let (tag_i, name_i, basic_i) = (idx("tag")?, idx("name")?, idx("basic")?);
    let opt_i = OPTION_COLUMNS
        .iter()
        .map(|(n, _)| idx(n))
        .collect::<Result<Vec<_>, _>>()?;
    for record in reader.records() {
        let r = record.map_err(|e| bad(e.to_string()))?;
        let tag = normalise_tag(&r[tag_i]);
        seen.insert(tag.clone());
        let mut row = vec![
            tag,
            r[name_i].to_string(),
            "2024b".into(),
            r[basic_i].to_string(),
        ];
        row.extend(opt_i.iter().map(|&i| r[i].to_string()));
        out.write_record(&row).map_err(|e| bad(e.to_string()))?;
    }

    let mut reader = csv::Reader::from_reader(additions_2026c.as_bytes());
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let idx = |name: &str| column_index(&headers, name, "2026c additions");
    let (tag_i, name_i, basic_i) = (idx("tag")?, idx("name")?, idx("basic")?);
    for record in reader.records() {
        let r = record.map_err(|e| bad(e.to_string()))?;
        let tag = normalise_tag(&r[tag_i]);
        if !seen.insert(tag.clone()) {
            return Err(bad(format!(
                "2026c addition {tag} is already in the 2024b table"
            )));
        }
        let mut row = vec![
            tag,
            r[name_i].to_string(),
            "2026c".into(),
            r[basic_i].to_string(),
        ];
        row.extend(std::iter::repeat_n(String::new(), OPTION_COLUMNS.len()));
        out.write_record(&row).map_err(|e| bad(e.to_string()))?;
    }
    let bytes = out.into_inner().map_err(|e| bad(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn embedded_table_parses_with_every_row() {
        let t = ActionTable::embedded();
        // 617 fixed tags of 2024b + 35 added by 2026c.
        assert_eq!(t.fixed_len(), 617 + 35);
        let patient_id = t.row(Tag(0x0010, 0x0020)).unwrap();
        assert_eq!(patient_id.basic, ActionCode::ZD);
        let sop = t.row(Tag(0x0008, 0x0018)).unwrap();
        assert_eq!(sop.code_for(&[]), ActionCode::U);
        assert_eq!(sop.code_for(&[DeidOption::RetainUids]), ActionCode::K);
        assert_eq!(t.row(Tag(0x6002, 0x3000)).unwrap().name, "Overlay Data");
        assert_eq!(t.row(Tag(0x5010, 0x0005)).unwrap().name, "Curve Data");
        assert_eq!(
            t.row(Tag(0x0029, 0x1010)).unwrap().name,
            "Private Attributes"
        );
        // Rows, say, is not an identifying attribute.
        assert!(t.row(Tag(0x0028, 0x0010)).is_none());
    }

    #[test]
    fn combined_codes_resolve_conservatively() {
        assert_eq!(ActionCode::ZD.resolve(), Action::Dummy);
        assert_eq!(ActionCode::XD.resolve(), Action::Dummy);
        assert_eq!(ActionCode::XZD.resolve(), Action::Dummy);
        assert_eq!(ActionCode::XZ.resolve(), Action::Empty);
        assert_eq!(ActionCode::XZU.resolve(), Action::RemapUid);
    }

    /// The committed table must be exactly what the shared sources derive to. Set
    /// `MEDFED_REGENERATE_TABLE=1` to rewrite it after the sources change.
    #[test]
    fn committed_table_matches_shared_sources() {
        let Some(shared) = medfed_testkit::shared("deid") else {
            return;
        };
        let e11 = std::fs::read_to_string(shared.join("ps3.15-table-e1-1.csv")).unwrap();
        let add =
            std::fs::read_to_string(shared.join("ps3.15-table-e1-1-2026c-basic-additions.csv"))
                .unwrap();
        let derived = derive_action_table_csv(&e11, &add).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ps3.15-e1-1.csv");
        if std::env::var_os("MEDFED_REGENERATE_TABLE").is_some() {
            std::fs::write(&path, &derived).unwrap();
        }
        assert_eq!(
            derived, EMBEDDED_TABLE,
            "data/ps3.15-e1-1.csv is stale; regenerate it"
        );
    }
}
