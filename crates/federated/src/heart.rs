//! The UCI Heart Disease table of four real centres (Cleveland, Hungary, Switzerland, Long
//! Beach VA; CC BY 4.0, Janosi et al. 1988) prepared as FLamby's Fed-Heart-Disease benchmark:
//! rows without missing values outside slope/ca/thal, 13 features (cp and restecg one-hot,
//! first level dropped), FLamby's per-centre train/test split from the file. Used by the tests,
//! the benchmark and the demo; the data is read from where it lies, never fetched.

use crate::table::{Design, Table, standardise};
use crate::{Disclosure, FederatedError, stats};

/// Centre ids and names, in the file's order.
pub const CENTRES: [(f64, &str); 4] = [
    (0.0, "Cleveland"),
    (1.0, "Hungary"),
    (2.0, "Switzerland"),
    (3.0, "Long Beach VA"),
];

/// FLamby's 13 features.
pub fn features() -> Vec<String> {
    [
        "age",
        "sex",
        "cp=2",
        "cp=3",
        "cp=4",
        "trestbps",
        "chol",
        "fbs",
        "restecg=1",
        "restecg=2",
        "thalach",
        "exang",
        "oldpeak",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One centre's training and test designs.
pub struct Centre {
    pub name: &'static str,
    pub train: Design,
    pub test: Design,
}

/// Read `heart_disease_4centres.csv` (its text) into the four centres.
pub fn centres(csv_text: &str) -> Result<Vec<Centre>, FederatedError> {
    // The split column is text; code it as a number column for the numeric table.
    let mut coded = String::with_capacity(csv_text.len());
    for (i, line) in csv_text.lines().enumerate() {
        if i == 0 {
            coded.push_str(line);
        } else {
            let mut cells: Vec<&str> = line.split(',').collect();
            if let Some(last) = cells.last_mut() {
                *last = match *last {
                    "train" => "1",
                    "test" => "2",
                    _ => "",
                };
            }
            coded.push_str(&cells.join(","));
        }
        coded.push('\n');
    }
    let t = Table::from_csv(&coded)?.filter_eq("flamby_kept", 1.0)?;
    let features = features();
    CENTRES
        .iter()
        .map(|&(id, name)| {
            let c = t.filter_eq("centre_id", id)?;
            Ok(Centre {
                name,
                train: c
                    .filter_eq("flamby_split", 1.0)?
                    .design(&features, "target")?,
                test: c
                    .filter_eq("flamby_split", 2.0)?
                    .design(&features, "target")?,
            })
        })
        .collect()
}

/// Standardise every centre's features with the pooled mean and standard deviation of the
/// training rows, computed federatedly (each centre releases its moments; sums are pooled).
pub fn standardise_federated(
    centres: &mut [Centre],
    rules: &Disclosure,
) -> Result<(), FederatedError> {
    let p = centres.first().map_or(0, |c| c.train.width());
    let (mut mean, mut sd) = (vec![0.0; p], vec![1.0; p]);
    for j in 1..p {
        let mut m = stats::Moments::default();
        for c in centres.iter() {
            let col: Vec<f64> = c.train.x.iter().map(|x| x[j]).collect();
            m.add(&stats::site_moments(&col, rules)?);
        }
        mean[j] = m.mean();
        sd[j] = m.variance().sqrt();
    }
    for c in centres.iter_mut() {
        standardise(&mut c.train, &mean, &sd);
        standardise(&mut c.test, &mean, &sd);
    }
    Ok(())
}

/// Each centre's own table as CSV text (the rows FLamby keeps; the columns the features are
/// made from, `target` and `flamby_split`): what one hospital's site node would register.
pub fn centre_tables(csv_text: &str) -> Result<Vec<(&'static str, String)>, FederatedError> {
    const KEEP: [&str; 13] = [
        "age",
        "sex",
        "cp",
        "trestbps",
        "chol",
        "fbs",
        "restecg",
        "thalach",
        "exang",
        "oldpeak",
        "target",
        "flamby_kept",
        "flamby_split",
    ];
    let mut lines = csv_text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| FederatedError::NoColumn(name.to_string()))
    };
    let picks = KEEP.iter().map(|k| col(k)).collect::<Result<Vec<_>, _>>()?;
    let (centre, kept) = (col("centre_id")?, col("flamby_kept")?);
    let out_columns: Vec<&str> = KEEP
        .iter()
        .copied()
        .filter(|k| *k != "flamby_kept")
        .collect();
    let mut tables: Vec<(&'static str, String)> = CENTRES
        .iter()
        .map(|(_, name)| (*name, format!("{}\n", out_columns.join(","))))
        .collect();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.get(kept) != Some(&"1") {
            continue;
        }
        let Some(id) = cells.get(centre).and_then(|c| c.parse::<usize>().ok()) else {
            continue;
        };
        let Some((_, text)) = tables.get_mut(id) else {
            continue;
        };
        let row: Vec<&str> = picks
            .iter()
            .zip(KEEP)
            .filter(|(_, k)| *k != "flamby_kept")
            .map(|(&i, _)| cells.get(i).copied().unwrap_or(""))
            .collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    Ok(tables)
}
